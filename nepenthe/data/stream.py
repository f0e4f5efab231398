"""Image files decoded batch by batch in DataLoader workers, for sets too large to hold in memory (ImageNet).

Evaluation images get the same resize-and-centre-crop as the in-memory folder sets; training images get the ImageNet
recipe (``crop``: RandomResizedCrop, ``flip``: horizontal flip). Shuffling and every random draw are seeded by
``(seed, epoch, index)``, so a resumed run sees the same batches whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from ..errors import ConfigError, DataError
from .images import read_image
from .loader import AUGMENTATIONS


@dataclass
class FileSplit:
    files: list[Path]
    labels: Tensor  # int64 [N]
    image_size: int

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def subset(self, index: Tensor) -> FileSplit:
        return FileSplit([self.files[i] for i in index.tolist()], self.labels[index], self.image_size)


class _Decoded(Dataset):
    """Item ``(epoch, index)``: the image decoded (and for training augmented) with that sample's own seed."""

    def __init__(self, split: FileSplit, augment: tuple[str, ...], seed: int):
        self.split, self.augment, self.seed = split, augment, seed
        size = split.image_size
        self.crop = v2.RandomResizedCrop(size, antialias=True)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        path = self.split.files[index]
        if not self.augment:
            return read_image(path, self.split.image_size), self.split.labels[index]
        torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF)  # this sample's draws, any worker
        try:
            with Image.open(path) as img:
                x = v2.functional.pil_to_tensor(img.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path} ({exc}); delete or replace it") from exc
        if "crop" in self.augment:
            x = self.crop(x)
        else:
            x = v2.functional.center_crop(v2.functional.resize(x, self.split.image_size, antialias=True),
                                          self.split.image_size)
        if "flip" in self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.split.labels[index]


class _EpochOrder(Sampler):
    """Runs in the main process: the loader's epoch order, as ``(epoch, index)`` items the workers decode."""

    def __init__(self, loader: FileLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.split)

    def __iter__(self):
        loader = self.loader
        n = len(loader.split)
        generator = torch.Generator().manual_seed(loader.seed * 1_000_003 + loader.epoch)
        order = torch.randperm(n, generator=generator) if loader.shuffle else torch.arange(n)
        if loader.shard is not None:  # this process's part of every global batch (each sample draws its own crops)
            parts = [torch.tensor_split(order[i:i + loader.global_batch], loader.shard.world)[loader.shard.rank]
                     for i in range(0, n, loader.global_batch)]
            order = torch.cat(parts)
        return iter([(loader.epoch, i) for i in order.tolist()])


class FileLoader:
    """Iterates normalised float batches like :class:`~nepenthe.data.loader.ArrayLoader`, decoding in workers that
    persist across epochs (pinned memory when the batches go to a GPU, normalised there)."""

    def __init__(self, split: FileSplit, batch_size: int, mean, std, *, shuffle: bool = False,
                 augment: tuple[str, ...] = (), seed: int = 0, workers: int = 4, device=None, shard=None):
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be a positive integer")
        for name in augment:
            if name not in AUGMENTATIONS:
                raise ConfigError(f"augmentation {name!r} is unknown; choose from {', '.join(AUGMENTATIONS)}")
        self.split, self.batch_size, self.shuffle, self.augment = split, batch_size, shuffle, tuple(augment)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0
        self.seed, self.epoch, self.workers = seed, 0, workers
        self.shard, self.global_batch = shard, batch_size  # a distributed run: this process's part of each batch
        self._batches: DataLoader | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self):
        if self._batches is None:  # built once: the workers outlive the epoch
            per_process = self.batch_size // self.shard.world if self.shard is not None else self.batch_size
            self._batches = DataLoader(_Decoded(self.split, self.augment, self.seed), batch_size=per_process,
                                       sampler=_EpochOrder(self), num_workers=self.workers,
                                       persistent_workers=self.workers > 0, pin_memory=self.device.type == "cuda")
        for x, y in self._batches:
            x = x.to(self.device, non_blocking=True)
            yield (x.float() - self.mean) / self.std, y.to(self.device, non_blocking=True)
