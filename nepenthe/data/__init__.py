"""Datasets; importing this package registers every source."""

from . import cifar, domains, fashion_mnist, finegrained, imagenet, synthetic, tiny_imagenet  # noqa: F401  (registers)
from .registry import DataBundle, create_data, list_data, register_data

__all__ = ["DataBundle", "create_data", "list_data", "register_data"]
