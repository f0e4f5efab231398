"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (``cifar-10-batches-py``, ``cifar-100-python``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision

from ..errors import DataError
from .loader import ImageSplit
from .registry import DataBundle, carve_validation, register_data

LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10,
                torchvision.datasets.CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100,
                 torchvision.datasets.CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def read_batches(folder: Path, names: list[str], label_key: bytes) -> ImageSplit:
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch[label_key])
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
            raise DataError(f"{path} is missing or unreadable ({exc!r}); put torchvision's CIFAR files there or "
                            f"pass dataset.kwargs.download=true where the network allows") from exc
    return ImageSplit(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long))


def _cifar(name: str, root: str, val_size: int, split_seed: int, train_subset: int | None, download: bool,
           augment, crop_padding: int) -> DataBundle:
    folder_name, train_files, test_files, label_key, classes, tv_class, mean, std = LAYOUTS[name]
    folder = Path(root) / folder_name
    if not folder.is_dir():
        if not download:
            raise DataError(f"{name} not found: expected torchvision's layout in {folder} (the extracted "
                            f"{folder_name} archive); pass dataset.kwargs.download=true where the network allows")
        tv_class(str(root), train=True, download=True)
    train, val = carve_validation(read_batches(folder, train_files, label_key), val_size, split_seed, train_subset)
    test = read_batches(folder, test_files, label_key)
    return DataBundle(name, train, val, test, num_classes=classes, mean=mean, std=std, augment=tuple(augment),
                      crop_padding=crop_padding)


@register_data("cifar10")
def cifar10(root: str = "data", val_size: int = 5000, split_seed: int = 0, train_subset: int | None = None,
            download: bool = False, augment: tuple[str, ...] = ("crop", "flip"), crop_padding: int = 4) -> DataBundle:
    return _cifar("cifar10", root, val_size, split_seed, train_subset, download, augment, crop_padding)


@register_data("cifar100")
def cifar100(root: str = "data", val_size: int = 5000, split_seed: int = 0, train_subset: int | None = None,
             download: bool = False, augment: tuple[str, ...] = ("crop", "flip"), crop_padding: int = 4) -> DataBundle:
    return _cifar("cifar100", root, val_size, split_seed, train_subset, download, augment, crop_padding)
