"""Turn probe statistics into graph edits on the activations (the method's decision; later passes must preserve it).

A unit with no switching neuron computes a fixed per-neuron linear map on the probed data: ReLU keeps ON neurons
(``z``) and zeroes OFF ones; LeakyReLU keeps ON neurons and scales OFF ones by its slope (linear, not dead). Such a
unit becomes the identity, a per-channel scale folded into the conv/linear before it, or a constant zero. A unit
that still switches keeps its activation, but its always-OFF ReLU neurons emit 0, so their producer rows are zeroed
(later removed by the channel pass). ReLU6 (clips at 6) and GELU (not ``z`` near 0) are approximations, flagged.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, fx, nn

from ..entropy import LayerStats, channel_dim
from ..units import RECTIFIERS
from .fold import can_scale_channels, scale_output_channels
from .graph import add_buffer, bypass, insert_after, module, shape

PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
ZERO_WHEN_OFF = (nn.ReLU, nn.ReLU6)


def off_slope(act: nn.Module) -> float:
    return float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 0.0


def reduced_scale(act: nn.Module, stats: LayerStats) -> Tensor | None:
    """Per-neuron factor a non-switching unit reduces to, or None when the unit switches or has no linear form."""
    if stats.switching > 0:
        return None
    on = stats.p_on == 1  # NaN (only exact zeros seen) counts as OFF: every rectifier maps 0 to 0
    if isinstance(act, PIECEWISE_LINEAR):
        return torch.where(on, 1.0, off_slope(act)).float()
    if on.all():  # GELU and friends: identity is the EASIER approximation, only when every neuron was ON
        return torch.ones(on.shape)
    return None


def _broadcast_shape(ndim: int, dim: int, size: int) -> list[int]:
    view = [1] * ndim
    view[dim] = size
    return view


def linearize_activations(gm: fx.GraphModule, stats: Mapping[str, LayerStats], layouts: Mapping[str, str],
                          device: torch.device | None = None) -> list[dict]:
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in stats:
            continue
        act, s = module(gm, node), stats[node.target]
        if not isinstance(act, RECTIFIERS):  # already an identity (EASIER's swap): the identity pass removes it
            continue
        out_shape = shape(node)
        neuron_dim = channel_dim(len(out_shape), layouts.get(node.target, "auto"))
        record = {"op": "linearize", "unit": node.target, "always_on": s.always_on, "always_off": s.always_off,
                  "switching": s.switching}
        scale = reduced_scale(act, s)
        if scale is not None:
            # ON neurons of ReLU/LeakyReLU are exactly z; ReLU6 clips above 6 and GELU differs from z near 0
            exact_on = isinstance(act, (nn.ReLU, nn.LeakyReLU)) or not bool((scale == 1).any())
            record["exact_on_probe"] = exact_on
            producer = can_scale_channels(gm, node, neuron_dim)
            if bool((scale == 1).all()):
                bypass(gm, node)
                record["action"] = "identity"
            elif not bool(scale.any()):
                zeros = torch.zeros(1, *out_shape[1:], device=device)
                const = insert_after(gm, node, "get_attr", add_buffer(gm, f"{node.target}_zero", zeros), ())
                node.replace_all_uses_with(const)
                gm.graph.erase_node(node)
                record["action"] = "zero"
            elif producer is not None:
                scale_output_channels(module(gm, producer), scale)
                bypass(gm, node)
                record["action"] = "scale_folded"
            else:
                view = _broadcast_shape(len(out_shape), neuron_dim, scale.numel())
                buf = insert_after(gm, node, "get_attr", add_buffer(gm, f"{node.target}_scale", scale.view(view).to(device)), ())
                mul = insert_after(gm, buf, "call_function", torch.mul, (node.args[0], buf))
                node.replace_all_uses_with(mul)
                gm.graph.erase_node(node)
                record["action"] = "scale"
        elif isinstance(act, ZERO_WHEN_OFF) and s.always_off + s.never_counted > 0:
            producer = can_scale_channels(gm, node, neuron_dim)
            if producer is not None:
                alive = ~((s.p_on == 0) | s.p_on.isnan())
                scale_output_channels(module(gm, producer), alive.float())
                record["action"] = "dead_channels_zeroed"
            else:
                record["action"] = "kept"
            record["exact_on_probe"] = True
        else:
            record["action"] = "kept"
            record["exact_on_probe"] = True
        done.append(record)
    return done
