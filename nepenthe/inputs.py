"""What a caller hands the library, checked before it can become a wrong number: activations the probe cannot see,
an accuracy that is a fraction, a batch that does not fit the model. Each refusal is one line naming the value and
what would be valid (docs/library.md, "What the library refuses").
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import ConfigError
from .units import RECTIFIERS, WEIGHT_LAYERS

SUPPORTED = ", ".join(cls.__name__ for cls in RECTIFIERS)
# Activation modules that are not rectifiers in the family's sense: no ON/OFF state, no linear regime to collapse to
NON_RECTIFIER_ACTIVATIONS = (nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardswish,
                             nn.Hardsigmoid, nn.Softplus, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Softsign, nn.Tanhshrink,
                             nn.LogSigmoid, nn.GLU)
# Rectifiers called as functions: a forward hook cannot see them, so they are neither probed nor linearized
FUNCTIONAL_RECTIFIERS = {torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.gelu, F.leaky_relu, F.leaky_relu_}
METHOD_RECTIFIERS = {"relu", "relu_"}


def check_activations(model: nn.Module, units: list, graph: fx.GraphModule | None) -> None:
    """Refuse a model whose depth the probe would misjudge: rectifiers called as functions (``torch.relu(x)``), or no
    supported rectifier module at all (a Tanh/SiLU network would run with ``k = 0/0``). Other activation modules
    beside real units only warn: they stay as they are and belong to no unit. ``graph`` is the model's fx trace
    (None when it cannot be traced: then only its modules are checked)."""
    name = type(model).__name__
    if graph is not None:
        calls = [f"{_callee(n)} ({n.name})" for n in graph.graph.nodes if _is_functional_rectifier(n)]
        if calls:
            raise ConfigError(f"{name} calls rectifiers as functions, which the entropy probe cannot hook: "
                              f"{', '.join(calls)}; give each call site a module of its own ({SUPPORTED})")
    others = [f"{path} ({type(m).__name__})" for path, m in model.named_modules()
              if isinstance(m, NON_RECTIFIER_ACTIVATIONS) and not isinstance(m, RECTIFIERS)]
    if not units:
        found = f"its activations are {', '.join(others)}" if others else "it has no activation module"
        raise ConfigError(f"{name} has no supported rectifier module ({SUPPORTED}): {found}; entropy-guided depth "
                          f"reduction needs rectifiers (units=[...] names them when discovery misses them)")
    if others:
        warnings.warn(f"{name}: {', '.join(others)} are not rectifiers ({SUPPORTED}); they are not probed and stay "
                      f"in place", stacklevel=3)


def _is_functional_rectifier(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in FUNCTIONAL_RECTIFIERS)
            or (node.op == "call_method" and node.target in METHOD_RECTIFIERS))


def _callee(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return f"{getattr(node.target, '__module__', '') or 'torch'}.{getattr(node.target, '__name__', node.target)}"


def check_percent(value, what: str = "evaluate()") -> float:
    """Top-1 in percent: a fraction (≤ 1.0), a missing value or NaN would make ``max_drop`` mean something else."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{what} returned val_acc={value!r}; it must be the validation top-1 in percent (0-100)")
    if not 1.0 < value <= 100.0:
        hint = f" ({value} looks like a fraction: return {100 * value:g})" if 0.0 <= value <= 1.0 else ""
        raise ConfigError(f"{what} returned val_acc={value!r}; it must be the validation top-1 in percent, above 1 "
                          f"and at most 100{hint}")
    return float(value)


def input_mismatch(model: nn.Module, x: torch.Tensor, exc: BaseException) -> ConfigError:
    """The error for a batch the model cannot take: the batch's shape and dtype beside what the first layer takes."""
    first = next(((path, m) for path, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)), None)
    expects = ""
    if first is not None:
        path, layer = first
        if isinstance(layer, nn.Linear):
            shape = f"[..., {layer.in_features}]"
        else:
            spatial = ", ".join("HWD"[i] for i in range(layer.weight.dim() - 2))
            shape = f"[B, {layer.in_channels}, {spatial}]"
        expects = f"; its first layer {path or '(root)'} ({type(layer).__name__}) takes {shape} {layer.weight.dtype}"
    reason = " ".join(str(exc).split())[:200]
    return ConfigError(f"a probe batch of shape {list(x.shape)} {x.dtype} does not fit {type(model).__name__}{expects} "
                       f"({type(exc).__name__}: {reason})")
