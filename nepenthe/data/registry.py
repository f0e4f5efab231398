"""Dataset registry: ``@register_data("name")`` on a builder returning a :class:`DataBundle`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..choices import PROBE_SPLITS
from ..errors import ConfigError, check_builder_kwargs, unknown_name
from .loader import ArrayLoader, ImageSplit
from .stream import FileLoader, FileSplit


@dataclass
class DataBundle:
    name: str
    train: ImageSplit | FileSplit
    val: ImageSplit | FileSplit
    test: ImageSplit | FileSplit
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...] = ()
    crop_padding: int = 4
    extra: dict = field(default_factory=dict)
    _resident: dict = field(default_factory=dict, repr=False)  # (split, device) -> the split's copy on that device

    @property
    def in_chans(self) -> int:
        return self.train.sample_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.train.sample_shape[1:]
        return height, width

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def loader(self, split: str, batch_size: int, *, seed: int = 0, device=None,
               shard=None) -> ArrayLoader | FileLoader:
        """``train`` shuffles and augments; ``train_aug`` is the augmented loader without shuffling (the reference
        codes' probe set); ``train_eval``/``val``/``test`` are plain ordered passes. With ``device`` an in-memory
        split is copied there once (kept for later loaders) and batches are built there; a streamed split decodes in
        persistent workers into pinned memory and is normalised on ``device``. With ``shard`` (a distributed run's
        training loader) each process gets its part of every batch of ``batch_size`` (the global batch)."""
        source = {"train": self.train, "train_aug": self.train, "train_eval": self.train, "val": self.val,
                  "test": self.test}
        if split not in source:
            raise ConfigError(f"split {split!r} is unknown; choose from {', '.join(source)}")
        augment = self.augment if split in ("train", "train_aug") else ()
        data = source[split]
        if isinstance(data, FileSplit):  # decoded on the fly (ImageNet)
            return FileLoader(data, batch_size, self.mean, self.std, shuffle=split == "train",
                              augment=augment, seed=seed, workers=self.extra.get("workers", 4), device=device,
                              shard=shard)
        if device is not None and torch.device(device) != data.images.device:
            key = (id(data), str(torch.device(device)))
            if key not in self._resident:
                self._resident[key] = data.to(device)
            data = self._resident[key]
        return ArrayLoader(data, batch_size, self.mean, self.std, shuffle=split == "train",
                           augment=augment, crop_padding=self.crop_padding, seed=seed, shard=shard)

    def probe_loader(self, split: str, batch_size: int, *, seed: int = 0,
                     device=None) -> ArrayLoader | FileLoader:
        """Entropy is measured on the training images without augmentation unless told otherwise."""
        if split not in PROBE_SPLITS:
            raise ConfigError(f"entropy.split={split!r} is unknown; choose from {', '.join(PROBE_SPLITS)}")
        return self.loader("train_eval" if split == "train" else split, batch_size, seed=seed, device=device)


_BUILDERS: dict[str, Callable[..., DataBundle]] = {}


def register_data(name: str):
    def decorate(builder):
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_data() -> list[str]:
    """Names of the registered datasets."""
    return sorted(_BUILDERS)


def create_data(name: str, root: str = "data", progress: bool | None = None, **kwargs) -> DataBundle:
    """Build a dataset; ``progress`` (decoding bars of folder datasets) is passed to builders that take it."""
    if name not in _BUILDERS:
        raise unknown_name("dataset", name, _BUILDERS)
    check_builder_kwargs("dataset", name, _BUILDERS[name], kwargs)
    if progress is not None and "progress" in inspect.signature(_BUILDERS[name]).parameters:
        kwargs.setdefault("progress", progress)
    return _BUILDERS[name](root=root, **kwargs)


def carve_validation(train: ImageSplit | FileSplit, val_size: int, split_seed: int, train_subset: int | None = None):
    """Split a fixed-seed validation set off ``train`` (independent of the run seed), then optionally subsample."""
    if not 0 < val_size < len(train):
        raise ConfigError(f"dataset.val_size={val_size} must be between 1 and {len(train) - 1}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
    val, rest = order[:val_size], order[val_size:]
    if train_subset is not None:
        if not 0 < train_subset <= len(rest):
            raise ConfigError(f"dataset.train_subset={train_subset} must be between 1 and {len(rest)}")
        rest = rest[:train_subset]
    return train.subset(rest), train.subset(val)
