"""Units for models that do not declare them, found on the ``torch.fx`` graph, and distinct activation modules.

For each rectifier the graph is walked backwards from its input through what does not mix neurons across layers —
norms, identities, dropout, reshapes/permutes — to the conv/linear that feeds it. After a residual add the walk
follows the first operand, which is the main path in torchvision, timm and nepenthe blocks (``out + shortcut``), so a
post-add ReLU belongs to the block's last conv as in the family's codes. A rectifier reached from anything else
(an input, a concatenation, another rectifier) is still a unit — it is probed and can be linearized — but has no
weights to prune. A weight layer feeds at most one unit (the first one found).
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from .errors import ConfigError
from .inputs import check_activations
from .units import RECTIFIERS, WEIGHT_LAYERS, Unit, shared_rectifiers

PASS_BACK_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.Identity,
                     nn.Dropout)
PASS_BACK_METHODS = {"permute", "contiguous", "reshape", "view", "flatten", "transpose"}
PASS_BACK_FUNCTIONS = {torch.permute, torch.reshape, torch.flatten, torch.transpose}
RESIDUAL_ADDS = {operator.add, operator.iadd, torch.add}  # a residual add: the walk back follows its first operand


def trace_for_units(model: nn.Module) -> fx.GraphModule:
    try:
        return model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception as exc:
        raise ConfigError(
            f"{type(model).__name__} declares no units() and torch.fx cannot trace it to find them "
            f"({type(exc).__name__}: {exc}); add a units() method returning nepenthe.units.Unit objects"
        ) from exc


def _trace_or_none(model: nn.Module) -> fx.GraphModule | None:
    try:
        return trace_for_units(model)
    except ConfigError:
        return None


def _feeding_layer(gm: fx.GraphModule, node: fx.Node) -> tuple[str, str] | None:
    """``(weight layer path, layout)`` feeding ``node``'s input, or None."""
    modules = dict(gm.named_modules())
    current = node.args[0] if node.args else None
    while isinstance(current, fx.Node):
        target = modules.get(current.target) if current.op == "call_module" else None
        if isinstance(target, WEIGHT_LAYERS):
            layout = "channels_first" if isinstance(target, nn.modules.conv._ConvNd) else "channels_last"
            return str(current.target), layout
        if isinstance(target, PASS_BACK_MODULES):
            current = current.args[0]
        elif current.op == "call_method" and current.target in PASS_BACK_METHODS:
            current = current.args[0]
        elif current.op == "call_function" and current.target in PASS_BACK_FUNCTIONS | RESIDUAL_ADDS:
            current = current.args[0]
        else:
            return None
    return None


def discover_units(model: nn.Module) -> list[Unit]:
    """One unit per rectifier call in graph order, each with the conv/linear that feeds it (if any)."""
    gm = trace_for_units(model)
    modules = dict(gm.named_modules())
    units, claimed = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), RECTIFIERS):
            continue
        found = _feeding_layer(gm, node)
        if found is None or found[0] in claimed:
            units.append(Unit(node.target, ()))
            continue
        claimed.add(found[0])
        units.append(Unit(node.target, (found[0],), found[1]))
    return units


def distinct_activations(model: nn.Module) -> nn.Module:
    """Make every rectifier non-inplace, and give each call site its own module.

    A module called at several places (torchvision's ``BasicBlock.relu``) would mix the neurons of two layers in one
    set of counts; it is split on the fx graph (the second call becomes ``relu_1`` and so on), which returns a
    ``GraphModule``. Models without a reused rectifier are returned as they are.
    """
    for module in model.modules():
        if isinstance(module, RECTIFIERS) and getattr(module, "inplace", False):
            module.inplace = False
    gm = trace_for_units(model)
    seen: dict[str, int] = {}
    reused = False
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), RECTIFIERS):
            continue
        count = seen.get(node.target, 0)
        seen[node.target] = count + 1
        if count:
            new_target = f"{node.target}_{count}"
            gm.add_submodule(new_target, copy.deepcopy(gm.get_submodule(node.target)))
            node.target = new_target
            reused = True
    if not reused:
        return model
    gm.recompile()
    return gm


def model_units(model: nn.Module) -> list[Unit]:
    """The model's declared units (a ``units()`` method), else those found on its fx graph; checked either way, and
    refused when the probe could not see the model's rectifiers (:func:`nepenthe.inputs.check_activations`)."""
    declare = getattr(model, "units", None)
    if callable(declare):
        units = list(declare())
        graph = _trace_or_none(model)  # only to look for rectifiers called as functions
    else:
        graph = trace_for_units(model)
        units = discover_units(graph)
    check_activations(model, units, graph)
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for unit in units:
        act = modules.get(unit.name)
        if not isinstance(act, RECTIFIERS):
            raise ConfigError(f"unit {unit.name!r} is not a rectifier module of {type(model).__name__}")
        if getattr(act, "inplace", False):
            raise ConfigError(f"activation {unit.name!r} is inplace; hooks would see its output, not its input")
        if unit.name in seen:
            raise ConfigError(f"activation {unit.name!r} is declared by two units")
        seen.add(unit.name)
        for w in unit.weights:
            if not isinstance(modules.get(w), WEIGHT_LAYERS):
                raise ConfigError(f"unit {unit.name!r} names {w!r}, which is not a conv/linear layer")
    shared = shared_rectifiers(model)
    if shared:
        raise ConfigError(f"rectifier module(s) reused at several places: {', '.join(shared)}; give each its own")
    return units
