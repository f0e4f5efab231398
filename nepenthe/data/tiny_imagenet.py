"""Tiny-ImageNet-200 in its distributed layout::

    <root>/tiny-imagenet-200/wnids.txt
    <root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG
    <root>/tiny-imagenet-200/val/images/*.JPEG + val/val_annotations.txt   (file <TAB> wnid <TAB> box)

The official test images have no labels, so, as in the family's code, the labelled ``val`` set is the test set and
a validation set is carved from the training images.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .images import IMAGENET_MEAN, IMAGENET_STD, image_files, load_split
from .registry import DataBundle, carve_validation, register_data

FOLDER = "tiny-imagenet-200"
WHERE = ("download http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it so that {folder} holds "
         "wnids.txt, train/ and val/")


def read_val_annotations(path: Path, classes: dict[str, int]) -> dict[str, int]:
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in classes:
            raise DataError(f"{path}:{number}: expected 'file<TAB>wnid<TAB>...' with a wnid from wnids.txt, "
                            f"got {line!r}")
        labels[fields[0]] = classes[fields[1]]
    return labels


@register_data("tiny_imagenet")
def tiny_imagenet(root: str = "data", image_size: int = 64, val_size: int = 10000, split_seed: int = 0,
                  train_subset: int | None = None, augment: tuple[str, ...] = ("crop", "flip"),
                  crop_padding: int = 8, progress: bool = True) -> DataBundle:
    folder = Path(root) / FOLDER
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"Tiny-ImageNet not found in {folder}; " + WHERE.format(folder=folder))
    wnids = wnids_file.read_text().split()
    classes = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for wnid in wnids:
        found = image_files(folder / "train" / wnid / "images")
        files += found
        labels += [classes[wnid]] * len(found)
    annotations = read_val_annotations(folder / "val" / "val_annotations.txt", classes)
    val_files = [f for f in image_files(folder / "val" / "images") if f.name in annotations]
    missing = len(annotations) - len(val_files)
    if missing:
        raise DataError(f"{folder / 'val' / 'images'} lacks {missing} images listed in val_annotations.txt")
    train = load_split(root, files, labels, image_size, desc="tiny_imagenet train", progress=progress)
    test = load_split(root, val_files, [annotations[f.name] for f in val_files], image_size,
                      desc="tiny_imagenet val", progress=progress)
    train, val = carve_validation(train, val_size, split_seed, train_subset)
    return DataBundle("tiny_imagenet", train, val, test, num_classes=len(wnids), mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, augment=tuple(augment), crop_padding=crop_padding)
