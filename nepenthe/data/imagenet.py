"""ImageNet (or any class-folder set) in the ImageFolder layout: ``<root>/<folder>/{train,val}/<class>/*``.

Decoded into memory at ``image_size`` like the other folder sets (the family uses ImageNet for starting weights,
not for pruning runs); a subset that does not fit is refused with the memory it would need. ``val`` is the test set
and a validation set is carved from the training images.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .images import IMAGENET_MEAN, IMAGENET_STD, class_folders, folder_samples, load_split
from .registry import DataBundle, carve_validation, register_data


@register_data("imagenet")
def imagenet(root: str = "data", folder: str = "imagenet", image_size: int = 224, val_size: int = 10000,
             split_seed: int = 0, train_subset: int | None = None, augment: tuple[str, ...] = ("crop", "flip"),
             crop_padding: int = 16, progress: bool = True) -> DataBundle:
    base = Path(root) / folder
    classes = class_folders(base / "train")
    if not classes:
        raise DataError(f"ImageNet not found: expected {base}/train/<class>/<image> and {base}/val/<class>/<image> "
                        f"(ImageFolder layout; sort the official val images into class folders)")
    train = load_split(root, *folder_samples(base / "train", classes), image_size, desc="imagenet train",
                       progress=progress)
    test = load_split(root, *folder_samples(base / "val", classes), image_size, desc="imagenet val",
                      progress=progress)
    train, val = carve_validation(train, val_size, split_seed, train_subset)
    return DataBundle("imagenet", train, val, test, num_classes=len(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      augment=tuple(augment), crop_padding=crop_padding)
