"""Synthetic images: fixed smooth class templates plus noise, learnable in a few epochs (for fast tests)."""

from __future__ import annotations

import torch

from .loader import ImageSplit
from .registry import DataBundle, register_data


def make_split(templates: torch.Tensor, size: int, noise: float, generator: torch.Generator) -> ImageSplit:
    labels = torch.randint(0, templates.shape[0], (size,), generator=generator)
    images = templates[labels] + noise * torch.randn(size, *templates.shape[1:], generator=generator)
    return ImageSplit((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)


@register_data("synthetic")
def synthetic(
    root: str = "",
    num_classes: int = 10,
    in_chans: int = 1,
    image_size: int = 16,
    train_size: int = 2000,
    val_size: int = 500,
    test_size: int = 1000,
    noise: float = 0.25,
    seed: int = 0,
    augment: tuple[str, ...] = (),
) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=generator)
    templates = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear")
    train, val, test = (make_split(templates, n, noise, generator) for n in (train_size, val_size, test_size))
    return DataBundle("synthetic", train, val, test, num_classes=num_classes, mean=(0.5,) * in_chans,
                      std=(0.25,) * in_chans, augment=tuple(augment), crop_padding=2)
