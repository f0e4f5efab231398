"""Model registry: ``@register_model("name")`` on a builder, ``create_model("name", ...)`` to build."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import check_builder_kwargs, unknown_name

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register a builder ``(num_classes, in_chans, **kwargs) -> nn.Module`` under ``name`` (``model.name``
    in configs)."""
    def decorate(builder: Callable[..., nn.Module]):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of the registered model builders."""
    return sorted(_BUILDERS)


def _timm_arch(name: str) -> str | None:
    """``timm/<arch>`` or a bare name timm knows (and nepenthe does not register): the timm architecture."""
    if name.startswith("timm/"):
        return name.removeprefix("timm/")
    if name in _BUILDERS:
        return None
    try:
        import timm
    except ImportError:
        return None
    return name if timm.is_model(name) else None


def is_known_model(name: str) -> bool:
    return name in _BUILDERS or _timm_arch(name) is not None


def create_model(name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    """Build a registered model (or any timm architecture as ``timm/<arch>``); unknown names list the known ones."""
    arch = _timm_arch(name)
    if arch is not None:  # model=timm model.name=resnet34, or model.name=timm/resnet34
        name, kwargs = "timm", {**{k: v for k, v in kwargs.items() if k != "arch"}, "arch": arch}
    if name not in _BUILDERS:
        raise unknown_name("model", name, _BUILDERS)
    check_builder_kwargs("model", name, _BUILDERS[name], kwargs, reserved=("num_classes", "in_chans"))
    return _BUILDERS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
