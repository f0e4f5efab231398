"""Multi-domain sets in the DomainBed layout: ``<root>/PACS/<domain>/<class>/*`` and ``<root>/VLCS/<domain>/<class>/*``.

Two protocols: ``split=mixed`` pools every domain and draws fixed-seed train/val/test fractions (the EASIER code's
setting); ``split=lodo`` (leave one domain out) trains and validates on the other domains and tests on
``test_domain``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .images import IMAGENET_MEAN, IMAGENET_STD, class_folders, folder_samples, load_split
from .loader import ImageSplit
from .registry import DataBundle, register_data

SPLITS = ("mixed", "lodo")


def _fractions(n: int, val_fraction: float, test_fraction: float, seed: int):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def domain_data(name: str, root: str, split: str, test_domain: str | None, image_size: int, val_fraction: float,
                test_fraction: float, split_seed: int, augment, crop_padding: int, progress: bool) -> DataBundle:
    folder = Path(root) / name.upper()
    domains = class_folders(folder)
    if not domains:
        raise DataError(f"{name.upper()} not found: expected {folder}/<domain>/<class>/<image> (DomainBed layout)")
    if split not in SPLITS:
        raise ConfigError(f"dataset.kwargs.split={split!r} is not valid; choose one of {', '.join(SPLITS)}")
    classes = sorted({c for d in domains for c in class_folders(folder / d)})
    per_domain = {}
    for domain in domains:
        files, labels = folder_samples(folder / domain, classes)
        per_domain[domain] = load_split(root, files, labels, image_size, desc=f"{name} {domain}", progress=progress)
    if split == "mixed":
        everything = ImageSplit(torch.cat([s.images for s in per_domain.values()]),
                                torch.cat([s.labels for s in per_domain.values()]))
        train_idx, val_idx, test_idx = _fractions(len(everything), val_fraction, test_fraction, split_seed)
        train, val, test = everything.subset(train_idx), everything.subset(val_idx), everything.subset(test_idx)
    else:
        if test_domain not in per_domain:
            raise ConfigError(f"dataset.kwargs.test_domain={test_domain!r} is not a domain of {name}; "
                              f"choose one of {', '.join(domains)}")
        sources = [s for d, s in per_domain.items() if d != test_domain]
        pooled = ImageSplit(torch.cat([s.images for s in sources]), torch.cat([s.labels for s in sources]))
        train_idx, val_idx, _ = _fractions(len(pooled), val_fraction, 0.0, split_seed)
        train, val, test = pooled.subset(train_idx), pooled.subset(val_idx), per_domain[test_domain]
    return DataBundle(name, train, val, test, num_classes=len(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      augment=tuple(augment), crop_padding=crop_padding,
                      extra={"domains": domains, "classes": classes, "split": split, "test_domain": test_domain})


@register_data("pacs")
def pacs(root: str = "data", split: str = "mixed", test_domain: str | None = None, image_size: int = 224,
         val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
         augment: tuple[str, ...] = ("crop", "flip"), crop_padding: int = 16, progress: bool = True) -> DataBundle:
    """PACS: domains art_painting, cartoon, photo, sketch; 7 classes."""
    return domain_data("pacs", root, split, test_domain, image_size, val_fraction, test_fraction, split_seed,
                       augment, crop_padding, progress)


@register_data("vlcs")
def vlcs(root: str = "data", split: str = "mixed", test_domain: str | None = None, image_size: int = 224,
         val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
         augment: tuple[str, ...] = ("crop", "flip"), crop_padding: int = 16, progress: bool = True) -> DataBundle:
    """VLCS: domains Caltech101, LabelMe, SUN09, VOC2007; 5 classes."""
    return domain_data("vlcs", root, split, test_domain, image_size, val_fraction, test_fraction, split_seed,
                       augment, crop_padding, progress)
