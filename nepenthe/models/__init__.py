"""Model zoo; importing this package registers every family."""

from . import resnet, zoo  # noqa: F401  (registers builders)
from .registry import create_model, is_known_model, list_models, register_model

__all__ = ["create_model", "is_known_model", "list_models", "register_model"]
