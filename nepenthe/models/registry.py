"""Model registry: ``@register_model("name")`` on a builder, ``create_model("name", ...)`` to build."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import check_builder_kwargs, unknown_name

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def decorate(builder: Callable[..., nn.Module]):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def create_model(name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    if name.startswith("timm/"):  # model.name=timm/resnet34 is short for model=timm model.kwargs.arch=resnet34
        name, kwargs = "timm", {**kwargs, "arch": name.removeprefix("timm/")}
    if name not in _BUILDERS:
        raise unknown_name("model", name, _BUILDERS)
    check_builder_kwargs("model", name, _BUILDERS[name], kwargs, reserved=("num_classes", "in_chans"))
    return _BUILDERS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
