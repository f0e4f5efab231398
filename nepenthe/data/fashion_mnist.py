"""Fashion-MNIST, offline first.

Looks for torchvision's layout (``ROOT/FashionMNIST/raw/*-ubyte``); if absent, unpacks the gzip files shipped by
Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) into it and checks the IDX headers against
the file sizes (Debian recompresses the archives, so upstream's gzip MD5 sums do not apply); only with
``download=True`` does it fall back to torchvision's download.

    python -m nepenthe.data.prepare fashion_mnist --root data     # prepare the data root once
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torchvision

from ..errors import DataError
from .loader import ImageSplit
from .registry import DataBundle, carve_validation, register_data

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = [name[: -len(".gz")] for name, _ in torchvision.datasets.FashionMNIST.resources]
IDX_MAGIC = {"images": 2051, "labels": 2049}
MEAN, STD = (0.2860,), (0.3530,)
NUM_CLASSES = 10
FIX = (
    "install Debian's package (`apt-get install -y dataset-fashion-mnist`, or `make data`) and run "
    "`python -m nepenthe.data.prepare fashion_mnist --root {root}`, or pass dataset.kwargs.download=true where the "
    "network allows"
)


def raw_dir(root: str | Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def check_idx(path: Path) -> None:
    """An IDX file's header announces its item count and shape; the byte size must agree."""
    kind = "images" if "images" in path.name else "labels"
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(16 if kind == "images" else 8)
    fields = [int.from_bytes(header[i : i + 4], "big") for i in range(0, len(header), 4)]
    expected = None
    if len(fields) >= 2 and fields[0] == IDX_MAGIC[kind]:
        expected = len(header) + fields[1] * (fields[2] * fields[3] if kind == "images" else 1)
    if expected != size:
        raise DataError(f"{path} is corrupt: its IDX header {fields} does not match its {size} bytes; delete it "
                        f"and prepare again")


def unpack_gz(source: Path, target: Path) -> None:
    """Decompress atomically: a killed unpack leaves no truncated file that would later look complete."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(source, "rb") as src:
            shutil.copyfileobj(src, out)
    except (OSError, EOFError) as exc:
        os.unlink(tmp)
        raise DataError(f"cannot unpack {source}: {exc}; reinstall it") from exc
    os.replace(tmp, target)


def prepare_fashion_mnist(
    root: str | Path, source_dir: str | Path = DEBIAN_DIR, download: bool = False
) -> Path:
    """Make sure ``root`` holds the four raw files in torchvision's layout; returns the raw folder."""
    raw = raw_dir(root)
    if all((raw / name).is_file() for name in RAW_FILES):
        for name in RAW_FILES:
            check_idx(raw / name)
        return raw
    source_dir = Path(source_dir)
    if all((source_dir / (name + ".gz")).is_file() for name in RAW_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            if not (raw / name).is_file():
                unpack_gz(source_dir / (name + ".gz"), raw / name)
            check_idx(raw / name)
        return raw
    if download:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        return raw
    raise DataError(f"Fashion-MNIST not found in {raw} nor in {source_dir}; " + FIX.format(root=root))


def read_split(root: str | Path, train: bool) -> ImageSplit:
    try:
        ds = torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
    except Exception as exc:  # torchvision raises bare asserts/RuntimeErrors on malformed IDX files
        raise DataError(f"Fashion-MNIST files in {raw_dir(root)} are unreadable ({exc!r}); delete them and "
                        f"prepare again. Fix: " + FIX.format(root=root)) from exc
    if ds.data.shape[0] != ds.targets.shape[0]:
        raise DataError(f"Fashion-MNIST in {raw_dir(root)} has {ds.data.shape[0]} images but "
                        f"{ds.targets.shape[0]} labels; delete the folder and prepare again")
    bad = (ds.targets < 0) | (ds.targets >= NUM_CLASSES)
    if bad.any():
        labels = raw_dir(root) / f"{'train' if train else 't10k'}-labels-idx1-ubyte"
        raise DataError(f"{labels} holds label {int(ds.targets[bad][0])} at index {int(bad.nonzero()[0])}; "
                        f"Fashion-MNIST labels are 0..{NUM_CLASSES - 1}: delete the folder and prepare again")
    return ImageSplit(ds.data.unsqueeze(1).contiguous(), ds.targets.long())


@register_data("fashion_mnist")
def fashion_mnist(
    root: str = "data",
    val_size: int = 5000,
    split_seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = False,
    source_dir: str = str(DEBIAN_DIR),
    augment: tuple[str, ...] = ("crop", "flip"),
    crop_padding: int = 2,
) -> DataBundle:
    prepare_fashion_mnist(root, source_dir=source_dir, download=download)
    train, val = carve_validation(read_split(root, True), val_size, split_seed, train_subset)
    test = read_split(root, False)
    if test_subset is not None:  # the first N test images: quick checks only, never a result to compare
        if not (isinstance(test_subset, int) and 0 < test_subset <= len(test)):
            raise DataError(f"dataset.kwargs.test_subset={test_subset!r} is not valid; use null (all {len(test)} "
                            f"test images) or a count in 1..{len(test)}")
        test = test.subset(torch.arange(test_subset))
    return DataBundle("fashion_mnist", train, val, test, num_classes=NUM_CLASSES, mean=MEAN, std=STD,
                      augment=tuple(augment), crop_padding=crop_padding)
