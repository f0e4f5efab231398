"""Every pruning method, declared once: what ``pruning.method`` in a config and :func:`create_method` accept.

A method registers itself with :func:`register_method` beside its class. An entry says all that the rest of the
project needs to know about a method: the class that plans its rounds (its ``Options`` dataclass holds its own
options and their defaults, its ``probe`` the entropy settings of its reference code), its label and colour in
tables and figures, whether it uses ``pruning.ratio``, which ``stop.*`` keys its stop rule honours, and whether its
dense round trains with a regulariser (so round 0 is not the plain dense network).
Config validation, the analysis and the YAML groups read the entry; adding a method is its decorated class (one
module) and ``conf/pruning/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, unknown_name

if TYPE_CHECKING:
    from ..entropy import ProbeSettings
    from .methods import Method

STOP_KEYS = ("max_drop", "max_rounds", "target_zero_units", "continue_past_drop")


def _never(options) -> bool:
    return False


@dataclass(frozen=True)
class MethodEntry:
    cls: type[Method]
    label: str  # as tables and figures name it
    colour: str  # one colour in every figure (a matplotlib colour)
    uses_ratio: bool = True  # False: pruning.ratio changes nothing it does, so setting it is refused
    stop_keys: tuple[str, ...] = STOP_KEYS  # the stop.* keys its stop rule honours; others set are refused
    regularises_dense: Callable[[Any], bool] = _never  # (its options) -> whether round 0 trains with its loss term
    rank: int = 100  # where tables and figures list it: the papers' order (NEPENTHE 1, EGP 2, EASIER 3, LaCoOT 4)

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def probe(self) -> ProbeSettings:
        return self.cls.probe

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.cls.Options))

    def defaults(self) -> dict:
        return asdict(self.cls.Options())

    def resolved(self, given: dict) -> Any:
        """The options object for ``given`` (a config's ``pruning`` mapping: None or absent = the default)."""
        return self.cls.Options(**{k: v for k, v in given.items() if k in self.option_names and v is not None})


METHODS: dict[str, MethodEntry] = {}  # filled by @register_method, kept in rank order


def register_method(label: str, colour: str, **facts):
    """Class decorator: ``@register_method("NEPENTHE", "tab:blue")`` declares the class under its ``name`` with the
    facts of :class:`MethodEntry` (``uses_ratio``, ``stop_keys``, ``regularises_dense``, ``rank``)."""

    def register(cls):
        if cls.name in METHODS:
            raise ConfigError(f"pruning method {cls.name!r} is registered twice ({METHODS[cls.name].cls.__name__}, "
                              f"{cls.__name__})")
        entries = [*METHODS.values(), MethodEntry(cls, label, colour, **facts)]
        METHODS.clear()
        METHODS.update((e.name, e) for e in sorted(entries, key=lambda e: e.rank))  # stable: ties in import order
        return cls

    return register


def method_entry(name: str) -> MethodEntry:
    if name not in METHODS:
        raise unknown_name("pruning method", name, METHODS)
    return METHODS[name]


def create_method(name: str, ratio: float = 0.5, **options) -> Method:
    """The method as its reference code runs it: ``create_method("egp")`` has EGP's probe settings
    (``method.probe``) and floor rounding. ``options`` are the method's own (``rounding`` for nepenthe/egp; LaCoOT's
    ``lambda_reg``, ``n_projections``, ``p``, ``units``, ``order``, ``finetune_epochs``); an option a method lacks is
    an error naming the ones it has, and a bad value is named as it was passed here (``ratio=2``, ``lambda_reg=-1``)."""
    try:
        return build_method(name, ratio, options)
    except ConfigError as exc:
        raise exc.for_caller({"pruning.ratio": "ratio", **{f"pruning.{k}": k for k in options}}) from None


def build_method(name: str, ratio: float, options: dict) -> Method:
    """:func:`create_method` with errors in the config's words (``pruning.ratio``): what config validation uses."""
    entry = method_entry(name)
    unknown = sorted(set(options) - set(entry.option_names))
    if unknown:
        has = ", ".join(entry.option_names) or "none"
        raise ConfigError(f"pruning method {name!r} has no option {', '.join(unknown)}; its options: {has}")
    return entry.cls(ratio, **options)


def method_options(name: str) -> tuple[str, ...]:
    """The options ``create_method(name, ratio, **options)`` accepts."""
    return method_entry(name).option_names
