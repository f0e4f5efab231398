"""Units: a rectifier activation together with the weight layer(s) that feed it.

Models declare their units through a ``units()`` method returning :class:`Unit` objects. Declaring keeps the
pairing explicit where a graph walk would be ambiguous (a ReLU after a residual add is fed by ``conv2`` *and* the
shortcut; the family's codes prune only the main path).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU)
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Unit:
    """One activation (its module path is the unit's name) and the conv/linear layers whose output reaches it."""

    name: str
    weights: tuple[str, ...]
    layout: str = "auto"  # where the neurons sit in the activation input; see entropy.LAYOUTS


def shared_rectifiers(model: nn.Module) -> list[str]:
    """Paths of rectifier modules that appear under more than one name (their counts would mix)."""
    first_seen: dict[int, str] = {}
    shared = []
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, RECTIFIERS):
            if id(module) in first_seen:
                shared.append(f"{first_seen[id(module)]}={name}")
            first_seen.setdefault(id(module), name)
    return shared


def rectifier_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, RECTIFIERS)]


def weight_layer_names(model: nn.Module) -> list[str]:
    """Every conv/linear layer, in module order (what global magnitude pruning ranges over)."""
    return [name for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def activation_modules(model: nn.Module, units: list[Unit]) -> dict[str, nn.Module]:
    """``{unit name: activation module}``: what :func:`~nepenthe.entropy.measure_entropy` hooks."""
    return {u.name: model.get_submodule(u.name) for u in units}


def unit_layouts(units: list[Unit]) -> dict[str, str]:
    return {u.name: u.layout for u in units}


def find_module(model: nn.Module, path: str) -> nn.Module | None:
    """The submodule at ``path``, or None where it no longer exists (a parent was replaced by an identity)."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def units_without_rectifier(model: nn.Module, units: list[Unit]) -> list[str]:
    """Units whose rectifier no longer acts: replaced by ``nn.Identity`` (EASIER) or gone with a block that was
    (LaCoOT). They count as zero-entropy units with every neuron ON."""
    return [u.name for u in units if not isinstance(find_module(model, u.name), RECTIFIERS)]


def replace_by_identity(model: nn.Module, paths: list[str]) -> None:
    """Replace the named modules by ``nn.Identity`` (EASIER's activations, LaCoOT's blocks; re-applied in order after
    loading a checkpoint, so a path inside an already replaced module is skipped)."""
    for path in paths:
        if find_module(model, path) is not None:
            model.set_submodule(path, nn.Identity())
