"""Transfer sets with official train/val/test splits, in torchvision's on-disk layouts (``download=true`` uses
torchvision's downloader to create exactly these):

    Flowers-102    <root>/flowers-102/jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat
    DTD            <root>/dtd/dtd/images/<class>/*.jpg, <root>/dtd/dtd/labels/{train,val,test}<partition>.txt
    FGVC-Aircraft  <root>/fgvc-aircraft-2013b/data/images/<id>.jpg, data/images_variant_{train,val,test}.txt,
                   data/variants.txt
"""

from __future__ import annotations

from pathlib import Path

import torchvision

from ..errors import DataError
from .images import IMAGENET_MEAN, IMAGENET_STD, load_split
from .registry import DataBundle, register_data

SPLITS = ("train", "val", "test")


def _ensure(folder: Path, marker: Path, name: str, download: bool, fetch) -> None:
    if marker.exists():
        return
    if download:
        fetch()
        return
    raise DataError(f"{name} not found: expected {marker} (torchvision's layout under {folder}); put the files "
                    f"there or pass dataset.kwargs.download=true where the network allows")


def _bundle(name, root, splits, num_classes, image_size, augment, crop_padding, progress) -> DataBundle:
    loaded = {s: load_split(root, files, labels, image_size, desc=f"{name} {s}", progress=progress)
              for s, (files, labels) in splits.items()}
    return DataBundle(name, loaded["train"], loaded["val"], loaded["test"], num_classes=num_classes,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=tuple(augment), crop_padding=crop_padding)


@register_data("flowers102")
def flowers102(root: str = "data", image_size: int = 224, download: bool = False,
               augment: tuple[str, ...] = ("crop", "flip"), crop_padding: int = 16, progress: bool = True):
    from scipy.io import loadmat

    folder = Path(root) / "flowers-102"
    _ensure(folder, folder / "setid.mat", "Flowers-102", download,
            lambda: [torchvision.datasets.Flowers102(str(root), split=s, download=True) for s in SPLITS])
    labels = loadmat(folder / "imagelabels.mat")["labels"].reshape(-1)
    ids = loadmat(folder / "setid.mat")
    splits = {}
    for split, key in zip(SPLITS, ("trnid", "valid", "tstid")):
        numbers = [int(i) for i in ids[key].reshape(-1)]
        splits[split] = ([folder / "jpg" / f"image_{i:05d}.jpg" for i in numbers],
                         [int(labels[i - 1]) - 1 for i in numbers])
    return _bundle("flowers102", root, splits, 102, image_size, augment, crop_padding, progress)


@register_data("dtd")
def dtd(root: str = "data", partition: int = 1, image_size: int = 224, download: bool = False,
        augment: tuple[str, ...] = ("crop", "flip"), crop_padding: int = 16, progress: bool = True):
    folder = Path(root) / "dtd" / "dtd"
    _ensure(folder, folder / "labels" / f"train{partition}.txt", "DTD", download,
            lambda: torchvision.datasets.DTD(str(root), split="train", partition=partition, download=True))
    classes = sorted(p.name for p in (folder / "images").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split in SPLITS:
        lines = (folder / "labels" / f"{split}{partition}.txt").read_text().split()
        splits[split] = ([folder / "images" / line for line in lines], [index[line.split("/")[0]] for line in lines])
    return _bundle("dtd", root, splits, len(classes), image_size, augment, crop_padding, progress)


@register_data("fgvc_aircraft")
def fgvc_aircraft(root: str = "data", image_size: int = 224, download: bool = False,
                  augment: tuple[str, ...] = ("crop", "flip"), crop_padding: int = 16, progress: bool = True):
    folder = Path(root) / "fgvc-aircraft-2013b" / "data"
    _ensure(folder, folder / "variants.txt", "FGVC-Aircraft", download,
            lambda: torchvision.datasets.FGVCAircraft(str(root), split="trainval", download=True))
    classes = [line.strip() for line in (folder / "variants.txt").read_text().splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split in SPLITS:
        files, labels = [], []
        for line in (folder / f"images_variant_{split}.txt").read_text().splitlines():
            if line.strip():
                image_id, variant = line.strip().split(" ", 1)
                files.append(folder / "images" / f"{image_id}.jpg")
                labels.append(index[variant])
        splits[split] = (files, labels)
    return _bundle("fgvc_aircraft", root, splits, len(classes), image_size, augment, crop_padding, progress)
