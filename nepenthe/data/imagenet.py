"""ImageNet (or any class-folder set) in the ImageFolder layout: ``<root>/<folder>/{train,val}/<class>/*``.

Streamed by default: images are decoded in DataLoader workers every epoch (ImageNet recipe for training: random
resized crop + flip; resize + centre crop for evaluation). ``stream=false`` decodes everything into memory once,
like the other folder sets (for subsets). ``val`` is the test set; a validation set is carved from training images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError
from .images import IMAGENET_MEAN, IMAGENET_STD, class_folders, folder_samples, load_split
from .registry import DataBundle, carve_validation, register_data
from .stream import FileSplit


@register_data("imagenet")
def imagenet(root: str = "data", folder: str = "imagenet", image_size: int = 224, val_size: int = 10000,
             split_seed: int = 0, train_subset: int | None = None, augment: tuple[str, ...] = ("crop", "flip"),
             crop_padding: int = 16, stream: bool = True, workers: int = 4, progress: bool = True) -> DataBundle:
    base = Path(root) / folder
    classes = class_folders(base / "train")
    if not classes:
        raise DataError(f"ImageNet not found: expected {base}/train/<class>/<image> and {base}/val/<class>/<image> "
                        f"(ImageFolder layout; sort the official val images into class folders)")
    splits = {}
    for split in ("train", "val"):
        files, labels = folder_samples(base / split, classes)
        if not files:
            raise DataError(f"ImageNet {split} split is empty: no images under {base / split}/<class>/")
        splits[split] = (FileSplit(files, torch.tensor(labels, dtype=torch.long), image_size) if stream else
                         load_split(root, files, labels, image_size, desc=f"imagenet {split}", progress=progress))
    train, val = carve_validation(splits["train"], val_size, split_seed, train_subset)
    return DataBundle("imagenet", train, val, splits["val"], num_classes=len(classes), mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, augment=tuple(augment), crop_padding=crop_padding, extra={"workers": workers})
