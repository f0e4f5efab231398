"""Zero-entropy activations whose neurons were all ON act as the identity: replace them.

Exact for ReLU and LeakyReLU on the probed data (their ON branch is ``z``); for ReLU6 (clips at 6) and GELU (not
``z`` near 0) the swap is an approximation, as in EASIER, and is flagged ``exact=False``.
"""

from __future__ import annotations

import copy
from typing import Mapping

from torch import nn

from .entropy import LayerStats
from .units import Unit

EXACT_ON_IDENTITY = (nn.ReLU, nn.LeakyReLU)


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def linearize_identity(model: nn.Module, units: list[Unit], stats: Mapping[str, LayerStats]):
    """A copy of ``model`` with every always-ON zero-entropy activation replaced by ``nn.Identity``.

    Returns ``(new_model, replaced)`` where ``replaced`` maps unit name to whether the swap is exact.
    """
    new_model = copy.deepcopy(model)
    replaced = {}
    for unit in units:
        s = stats[unit.name]
        if s.is_zero_entropy and s.identity_on_probe:
            replaced[unit.name] = isinstance(new_model.get_submodule(unit.name), EXACT_ON_IDENTITY)
            set_submodule(new_model, unit.name, nn.Identity())
    return new_model, replaced
