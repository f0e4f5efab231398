"""Every pruning method by name: what ``pruning.method`` in a config and :func:`create_method` accept."""

from __future__ import annotations

import inspect

from ..errors import ConfigError, unknown_name
from .lacoot import Lacoot
from .methods import Easier, Egp, GlobalMagnitude, LayerwiseMagnitude, Method, Nepenthe, NoPruning, Uniform

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Nepenthe, Egp, Easier, GlobalMagnitude, Uniform, LayerwiseMagnitude, NoPruning, Lacoot)
}
ENTROPY_BUDGET_METHODS = tuple(name for name, m in METHODS.items() if issubclass(m, Nepenthe))


def create_method(name: str, ratio: float = 0.5, **options) -> Method:
    """The method as its reference code runs it: ``create_method("egp")`` has EGP's probe settings
    (``method.probe``) and floor rounding. ``options`` are the method's own (``rounding`` for nepenthe/egp; LaCoOT's
    ``lambda_reg``, ``n_projections``, ``p``, ``units``, ``order``, ``max_drop``); an option a method lacks is an
    error naming the ones it has, and a bad value is named as it was passed here (``ratio=2``, ``lambda_reg=-1``)."""
    try:
        return build_method(name, ratio, options)
    except ConfigError as exc:
        raise exc.for_caller({"pruning.ratio": "ratio", **{f"pruning.{k}": k for k in options}}) from None


def build_method(name: str, ratio: float, options: dict) -> Method:
    """:func:`create_method` with errors in the config's words (``pruning.ratio``): what config validation uses."""
    if name not in METHODS:
        raise unknown_name("pruning method", name, METHODS)
    unknown = sorted(set(options) - set(method_options(name)))
    if unknown:
        has = ", ".join(method_options(name)) or "none"
        raise ConfigError(f"pruning method {name!r} has no option {', '.join(unknown)}; its options: {has}")
    return METHODS[name](ratio, **options)


def method_options(name: str) -> tuple[str, ...]:
    """The options ``create_method(name, ratio, **options)`` accepts."""
    params = inspect.signature(METHODS[name].__init__).parameters
    return tuple(p for p in params if p not in ("self", "ratio", "options"))
