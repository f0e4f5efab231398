"""Remove channels that are exactly zero: a conv/linear output row with zero weights and zero bias (an always-OFF
ReLU neuron whose producer row was zeroed, or a row pruned away). The row goes from the producer and the matching
input slice from every layer that reads it, through ops that map 0 to 0 channel by channel (rectifiers, pooling,
dropout, identity, a flatten of a 1×1 map). A channel that reaches anything else (a residual add, a norm with a
shift, the output) stays.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .graph import WEIGHT_OPS, exclusive_modules, module, shape

ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Identity, nn.Dropout)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ZERO_PRESERVING_FUNCTIONS = (torch.relu, F.relu, F.gelu, F.silu)


def dead_rows(layer: nn.Module) -> Tensor:
    """Output channels whose weights and bias are all zero."""
    weight = layer.weight.detach().flatten(1)
    dead = ~weight.any(dim=1)
    if layer.bias is not None:
        dead &= layer.bias.detach() == 0
    return dead


def _is_flatten_to_channels(gm: fx.GraphModule, user: fx.Node, source: fx.Node) -> bool:
    """A flatten from dim 1 of a map whose spatial size is 1, so channel c becomes feature c."""
    src_shape = shape(source)
    if src_shape is None or len(src_shape) != 4 or math.prod(src_shape[2:]) != 1:
        return False
    if isinstance(module(gm, user), nn.Flatten):
        return module(gm, user).start_dim == 1 and module(gm, user).end_dim == -1
    start = user.args[1] if len(user.args) > 1 else user.kwargs.get("start_dim", 0)
    return (user.op == "call_function" and user.target is torch.flatten or
            user.op == "call_method" and user.target == "flatten") and start == 1 and len(user.args) <= 2


def channel_readers(gm: fx.GraphModule, producer: fx.Node) -> list[fx.Node] | None:
    """The conv/linear nodes that read ``producer``'s channels, or None if a channel could reach anything else."""
    exclusive = exclusive_modules(gm)
    readers, stack = [], [(producer, "map" if isinstance(module(gm, producer), nn.Conv2d) else "features")]
    while stack:
        node, kind = stack.pop()
        for user in node.users:
            layer = module(gm, user)
            if user.op == "output" or user.args[0] is not node:
                return None
            if isinstance(layer, nn.Conv2d) and kind == "map" and layer.groups == 1 and user.target in exclusive:
                readers.append(user)
            elif isinstance(layer, nn.Linear) and kind == "features" and user.target in exclusive:
                readers.append(user)
            elif isinstance(layer, ZERO_PRESERVING) or (isinstance(layer, POOLS) and kind == "map"):
                stack.append((user, kind))
            elif user.op == "call_function" and user.target in ZERO_PRESERVING_FUNCTIONS and len(user.args) == 1:
                stack.append((user, kind))
            elif kind == "map" and _is_flatten_to_channels(gm, user, node):
                stack.append((user, "features"))
            else:
                return None
    return readers


@torch.no_grad()
def _keep_rows(layer: nn.Module, keep: Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[keep].clone())
    if isinstance(layer, nn.Conv2d):
        layer.out_channels = int(keep.sum())
    else:
        layer.out_features = int(keep.sum())


@torch.no_grad()
def _keep_inputs(layer: nn.Module, keep: Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[:, keep].clone())
    if isinstance(layer, nn.Conv2d):
        layer.in_channels = int(keep.sum())
    else:
        layer.in_features = int(keep.sum())


def remove_dead_channels(gm: fx.GraphModule) -> list[dict]:
    done = []
    exclusive = exclusive_modules(gm)
    for node in list(gm.graph.nodes):
        layer = module(gm, node)
        if not isinstance(layer, WEIGHT_OPS) or node.target not in exclusive:
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            continue  # a depthwise row is tied to its input channel; removing it would reach backwards
        dead = dead_rows(layer)
        if not dead.any() or dead.all():  # all dead: a constant, the constant pass's job
            continue
        readers = channel_readers(gm, node)
        if not readers:
            continue
        keep = ~dead
        _keep_rows(layer, keep)
        for reader in readers:
            _keep_inputs(module(gm, reader), keep)
        done.append({"op": "remove_channels", "layer": node.target, "removed": int(dead.sum()),
                     "kept": int(keep.sum()), "readers": [r.target for r in readers], "exact": True})
    return done
