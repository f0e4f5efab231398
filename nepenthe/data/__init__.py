"""Datasets; importing this package registers every source."""

from . import fashion_mnist, synthetic  # noqa: F401  (registers builders)
from .registry import DataBundle, create_data, list_data, register_data

__all__ = ["DataBundle", "create_data", "list_data", "register_data"]
