"""Pruning methods: each turns (model, units, entropy stats) into a plan of how many weights to cut per layer.

A plan is data, so it can be recorded, tested against hand-computed numbers and applied later by
:func:`apply_plan`; every method prunes the smallest-magnitude surviving weights of the layers it chose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from torch import nn

from ..distributed import SINGLE, Collective
from ..entropy import LayerStats, ProbeSettings
from ..errors import ConfigError
from ..units import RECTIFIERS, Unit, find_module, replace_by_identity, weight_layer_names
from .budget import (
    check_ratio,
    check_rounding,
    global_magnitude_allocation,
    nepenthe_allocation,
    smallest_counts,
    uniform_allocation,
)
from .masks import (
    keep_masked_weights_current,
    mean_abs_nonzero,
    nonzero_remaining,
    prune_smallest,
    remaining,
    remaining_magnitudes,
)
from .registry import register_method


@dataclass
class PruningPlan:
    counts: dict[str, int] = field(default_factory=dict)  # layer path -> weights to remove this round
    frozen_units: list[str] = field(default_factory=list)  # zero-entropy units left alone
    identities: list[str] = field(default_factory=list)  # modules replaced by nn.Identity this round (EASIER, LaCoOT)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def is_empty(self) -> bool:
        return self.total == 0 and not self.identities


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True)
class BudgetOptions:
    """NEPENTHE's budget: shares → weight counts by ``nearest`` (the counts sum to the budget) or ``floor`` (the EGP
    code's ``int()`` per layer)."""

    rounding: str = "nearest"


@dataclass(frozen=True)
class EgpOptions(BudgetOptions):
    rounding: str = "floor"


class Method:
    """Turns (model, units, entropy stats, the records so far) into a :class:`PruningPlan`. A method may also add a
    term to the training loss (:meth:`loss_term`), measure what its plan needs (:meth:`measure`) and stop on its
    own terms (:meth:`stop_rule`). Its own options are the fields of ``Options`` (a dataclass: the one place their
    defaults are written; ``pruning/registry.py`` declares the rest of what is known about the method)."""

    name = "base"
    probe = ProbeSettings()
    Options: type = NoOptions

    def __init__(self, ratio: float = 0.5, **options):
        self.ratio = check_ratio(ratio)
        self.options = self.make_options(options)

    @classmethod
    def make_options(cls, options: dict):
        unknown = sorted(set(options) - {f.name for f in fields(cls.Options)})
        if unknown:
            raise ConfigError(f"pruning method {cls.name!r} takes no option(s) {', '.join(unknown)}")
        return cls.Options(**options)

    def plan(self, model: nn.Module, units: list[Unit], stats: Mapping[str, LayerStats],
             history: Sequence = ()) -> PruningPlan:
        raise NotImplementedError

    def check(self, model: nn.Module) -> None:
        """Refuse, before anything runs, a model this method cannot work on (one error naming what is wrong)."""

    def loss_term(self, model: nn.Module):
        """A :class:`~nepenthe.engine.LossTerm` added to the cross-entropy while training, or None."""
        return None

    def measure(self, model: nn.Module, batches, device, collective: Collective = SINGLE) -> dict:
        """What the plan needs measured after each round, recorded as the round's ``method_stats`` (across the
        processes of ``collective``, each measuring its share of the batches)."""
        return {}

    def stop_rule(self, stop, model: nn.Module):
        """The :class:`~nepenthe.config.StopConfig` the loop uses for this method (the configured one)."""
        return stop

    def finetune_epochs(self, configured: int) -> int:
        """Fine-tuning epochs of a round after the dense one (the configured number)."""
        return configured


def unit_remaining(model: nn.Module, unit: Unit) -> int:
    return sum(remaining(model.get_submodule(w)) for w in unit.weights)


def unit_nonzero(model: nn.Module, unit: Unit) -> int:
    return sum(nonzero_remaining(model.get_submodule(w)) for w in unit.weights)


def split_over_layers(model: nn.Module, layers: tuple[str, ...], n: int) -> dict[str, int]:
    """A unit fed by several layers loses its ``n`` smallest weights wherever they lie among those layers."""
    if len(layers) == 1:
        return {layers[0]: n}
    counts = smallest_counts([remaining_magnitudes(model.get_submodule(w)) for w in layers], n)
    return dict(zip(layers, counts))


@register_method("NEPENTHE", "tab:blue", rank=1)
class Nepenthe(Method):
    """Entropy-guided budget (docs/DESIGN.md step 5); zero-entropy units are frozen. Remaining weights are counted as
    the EGP code does (alive and ``w != 0``), so a unit whose alive weights are all exactly zero is skipped. Entropy
    as the NEPENTHE paper specifies it, measured consistently: pooled over the whole clean training set."""

    name = "nepenthe"
    Options: type = BudgetOptions

    def __init__(self, ratio: float = 0.5, **options):
        super().__init__(ratio, **options)
        self.rounding = check_rounding(self.options.rounding)

    def prunable(self, model, units, stats) -> tuple[list[Unit], list[str]]:
        alive = [u for u in units if unit_nonzero(model, u) > 0]
        frozen = [u.name for u in alive if stats[u.name].entropy <= 0.0]
        return [u for u in alive if stats[u.name].entropy > 0.0], frozen

    def plan(self, model, units, stats, history=()) -> PruningPlan:
        prunable, frozen = self.prunable(model, units, stats)
        plan = PruningPlan(frozen_units=frozen)
        if not prunable:
            return plan
        nnz = [unit_nonzero(model, u) for u in prunable]
        per_unit = nepenthe_allocation(
            entropy=[stats[u.name].entropy for u in prunable],
            mean_abs=[mean_abs_nonzero([model.get_submodule(w) for w in u.weights]) for u in prunable],
            nnz=nnz, ratio=self.ratio, rounding=self.rounding,
        )
        for unit, n, have in zip(prunable, per_unit, nnz):
            if n == have:  # capped: the whole unit goes, alive exact zeros included, so it really is at 100 %
                n = unit_remaining(model, unit)
            plan.counts.update(split_over_layers(model, unit.weights, n))
        return plan


@register_method("EGP", "tab:orange", rank=2)
class Egp(Nepenthe):
    """EGP as its code runs: the same entropy-weighted budget with each share truncated by ``int()`` (floor), and
    its code's entropy: ON iff z > 0, mean over non-constant neurons, per-batch values averaged over the augmented
    training loader at the training batch size."""

    name = "egp"
    Options: type = EgpOptions
    probe = ProbeSettings(zero_state="off", layer_mean="nonconstant", pooling="batch", split="train_aug",
                          batch_size=None)


@register_method("EASIER", "tab:green", uses_ratio=False, rank=3)
class Easier(Method):
    """EASIER: no weight pruning; each round the lowest-entropy activation still in place becomes the identity —
    or, as in the EASIER code, every activation at exactly zero entropy at once when there are several."""

    name = "easier"
    probe = ProbeSettings(zero_state="on", layer_mean="all", pooling="batch", split="train", batch_size=None)

    def plan(self, model, units, stats, history=()) -> PruningPlan:
        candidates = [u for u in units if isinstance(find_module(model, u.name), RECTIFIERS)]
        if not candidates:
            return PruningPlan()
        zero = [u.name for u in candidates if stats[u.name].is_zero_entropy]
        if zero:
            return PruningPlan(identities=zero)
        lowest = min(candidates, key=lambda u: stats[u.name].entropy)  # ties: the first in model order
        return PruningPlan(identities=[lowest.name])


@register_method("IMP", "tab:purple", rank=5)
class GlobalMagnitude(Method):
    """IMP: the ``ratio`` smallest surviving weights over every conv/linear layer (shortcuts, classifier too)."""

    name = "imp"

    def plan(self, model, units, stats, history=()) -> PruningPlan:
        layers = weight_layer_names(model)
        counts = global_magnitude_allocation([remaining_magnitudes(model.get_submodule(n)) for n in layers], self.ratio)
        return PruningPlan(counts=dict(zip(layers, counts)))


@register_method("uniform", "tab:brown", rank=6)
class Uniform(Method):
    """Layer-wise magnitude pruning: the same ``ratio`` of surviving weights in every unit's layers."""

    name = "uniform"

    def layers(self, model, units) -> list[str]:
        return [w for u in units for w in u.weights]

    def plan(self, model, units, stats, history=()) -> PruningPlan:
        layers = self.layers(model, units)
        counts = uniform_allocation([remaining(model.get_submodule(n)) for n in layers], self.ratio)
        return PruningPlan(counts=dict(zip(layers, counts)))


@register_method("layer-wise magnitude", "tab:pink", rank=7)
class LayerwiseMagnitude(Uniform):
    """Layer-wise magnitude pruning over every conv/linear layer (shortcuts and classifier included)."""

    name = "layerwise"

    def layers(self, model, units) -> list[str]:
        return weight_layer_names(model)


@register_method("no pruning", "tab:gray", uses_ratio=False, rank=8)
class NoPruning(Method):
    """Dense control: trains once and measures entropy, prunes nothing."""

    name = "none"

    def __init__(self, ratio: float = 0.5, **options):
        self.ratio = ratio  # unused: nothing is pruned
        self.options = self.make_options(options)

    def plan(self, model, units, stats, history=()) -> PruningPlan:
        return PruningPlan()


def apply_plan(model: nn.Module, plan: PruningPlan) -> None:
    """Prune each layer's planned number of smallest surviving weights (``torch.nn.utils.prune`` masks) and replace
    the planned modules by identities."""
    for layer, n in plan.counts.items():
        prune_smallest(model.get_submodule(layer), n)
    if plan.counts:
        keep_masked_weights_current(model)
    replace_by_identity(model, plan.identities)
