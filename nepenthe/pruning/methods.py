"""Pruning methods: each turns (model, units, entropy stats) into a plan of how many weights to cut per layer.

A plan is data, so it can be recorded, tested against hand-computed numbers and applied later by
:func:`apply_plan`; every method prunes the smallest-magnitude surviving weights of the layers it chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from ..entropy import LayerStats
from ..errors import ConfigError, unknown_name
from ..units import RECTIFIERS, Unit, weight_layer_names
from .budget import (check_ratio, check_rounding, global_magnitude_allocation, nepenthe_allocation, smallest_counts,
                     uniform_allocation)
from .masks import mean_abs_nonzero, nonzero_remaining, prune_smallest, remaining, remaining_magnitudes


@dataclass
class PruningPlan:
    counts: dict[str, int] = field(default_factory=dict)  # layer path -> weights to remove this round
    frozen_units: list[str] = field(default_factory=list)  # zero-entropy units left alone
    linearize: list[str] = field(default_factory=list)  # activations replaced by nn.Identity this round (EASIER)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def is_empty(self) -> bool:
        return self.total == 0 and not self.linearize


class Method:
    name = "base"

    def __init__(self, ratio: float, **options):
        self.ratio = check_ratio(ratio)
        if options:
            raise ConfigError(f"pruning method {self.name!r} takes no option(s) {', '.join(sorted(options))}")

    def plan(self, model: nn.Module, units: list[Unit], stats: Mapping[str, LayerStats]) -> PruningPlan:
        raise NotImplementedError


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


class Nepenthe(Method):
    """Entropy-guided budget (docs/DESIGN.md step 5); zero-entropy units are frozen. Remaining weights are counted as the
    EGP code does (alive and ``w != 0``), so a unit whose alive weights are all exactly zero is skipped."""

    name = "nepenthe"

    def __init__(self, ratio: float, rounding: str = "nearest"):
        super().__init__(ratio)
        self.rounding = check_rounding(rounding)

    def prunable(self, model, units, stats) -> tuple[list[Unit], list[str]]:
        alive = [u for u in units if unit_nonzero(model, u) > 0]
        frozen = [u.name for u in alive if stats[u.name].entropy <= 0.0]
        return [u for u in alive if stats[u.name].entropy > 0.0], frozen

    def plan(self, model, units, stats) -> PruningPlan:
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


class Egp(Nepenthe):
    """EGP: the same entropy-weighted budget; its entropy options (ON iff z > 0, mean over non-constant neurons,
    per-batch values averaged, augmented training loader) come with ``pruning=egp`` in the config."""

    name = "egp"


class Easier(Method):
    """EASIER: no weight pruning; each round the lowest-entropy activation still in place becomes the identity —
    or, as in the EASIER code, every activation at exactly zero entropy at once when there are several."""

    name = "easier"

    def plan(self, model, units, stats) -> PruningPlan:
        candidates = [u for u in units if isinstance(model.get_submodule(u.name), RECTIFIERS)]
        if not candidates:
            return PruningPlan()
        zero = [u.name for u in candidates if stats[u.name].is_zero_entropy]
        if zero:
            return PruningPlan(linearize=zero)
        lowest = min(candidates, key=lambda u: stats[u.name].entropy)  # ties: the first in model order
        return PruningPlan(linearize=[lowest.name])


class GlobalMagnitude(Method):
    """IMP: the ``ratio`` smallest surviving weights over every conv/linear layer (shortcuts, classifier too)."""

    name = "imp"

    def plan(self, model, units, stats) -> PruningPlan:
        layers = weight_layer_names(model)
        counts = global_magnitude_allocation([remaining_magnitudes(model.get_submodule(n)) for n in layers], self.ratio)
        return PruningPlan(counts=dict(zip(layers, counts)))


class Uniform(Method):
    """Layer-wise magnitude pruning: the same ``ratio`` of surviving weights in every unit's layers."""

    name = "uniform"

    def layers(self, model, units) -> list[str]:
        return [w for u in units for w in u.weights]

    def plan(self, model, units, stats) -> PruningPlan:
        layers = self.layers(model, units)
        counts = uniform_allocation([remaining(model.get_submodule(n)) for n in layers], self.ratio)
        return PruningPlan(counts=dict(zip(layers, counts)))


class LayerwiseMagnitude(Uniform):
    """Layer-wise magnitude pruning over every conv/linear layer (shortcuts and classifier included)."""

    name = "layerwise"

    def layers(self, model, units) -> list[str]:
        return weight_layer_names(model)


class NoPruning(Method):
    """Dense control: trains once and measures entropy, prunes nothing."""

    name = "none"

    def __init__(self, ratio: float = 0.5):
        self.ratio = ratio

    def plan(self, model, units, stats) -> PruningPlan:
        return PruningPlan()


METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Nepenthe, Egp, Easier, GlobalMagnitude, Uniform, LayerwiseMagnitude, NoPruning)
}


ENTROPY_BUDGET_METHODS = tuple(name for name, m in METHODS.items() if issubclass(m, Nepenthe))


def create_method(name: str, ratio: float, **options) -> Method:
    """``options`` are the method's own (``rounding`` for nepenthe/egp); an option a method lacks is an error."""
    if name not in METHODS:
        raise unknown_name("pruning method", name, METHODS)
    return METHODS[name](ratio, **options)


def apply_plan(model: nn.Module, plan: PruningPlan) -> None:
    """Prune each layer's planned number of smallest surviving weights (``torch.nn.utils.prune`` masks) and swap the planned activations for identities."""
    for layer, n in plan.counts.items():
        prune_smallest(model.get_submodule(layer), n)
    linearize(model, plan.linearize)


def linearize(model: nn.Module, activations: list[str]) -> None:
    """Replace the named activations by ``nn.Identity`` (EASIER's step; re-applied after loading a checkpoint)."""
    for path in activations:
        model.set_submodule(path, nn.Identity())


def linearized_units(model: nn.Module, units: list[Unit]) -> list[str]:
    """Units whose activation has already been replaced by an identity."""
    return [u.name for u in units if not isinstance(model.get_submodule(u.name), RECTIFIERS)]
