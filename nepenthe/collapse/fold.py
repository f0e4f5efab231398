"""Exact folds into a conv/linear layer: an eval-mode BatchNorm after it, a per-channel scale of its output."""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .graph import WEIGHT_OPS, bypass, exclusive_modules, is_module, module, only_user, shape

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def foldable_producer(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The conv/linear node feeding ``node`` if its output goes nowhere else and the module (and its tensors) are used
    only there."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or not is_module(gm, source, WEIGHT_OPS):
        return None
    if only_user(source) is not node or source.target not in exclusive_modules(gm):
        return None
    return source


def fold_batchnorms(gm: fx.GraphModule) -> list[dict]:
    """Fold every eval-mode BatchNorm that directly follows a conv (or a linear on 2-D input) into that layer."""
    done = []
    for node in list(gm.graph.nodes):
        bn = module(gm, node)
        if not isinstance(bn, BATCHNORMS) or bn.running_mean is None:
            continue
        source = foldable_producer(gm, node)
        if source is None:
            continue
        layer = module(gm, source)
        if isinstance(layer, nn.Conv2d) != isinstance(bn, nn.BatchNorm2d):
            continue
        if isinstance(layer, nn.Linear):
            if len(shape(source) or ()) != 2:  # BatchNorm1d on (N, C, L) normalises dim 1, a linear writes the last
                continue
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        gm.add_submodule(source.target, fused)
        bypass(gm, node)
        done.append({"op": "fold_batchnorm", "layer": source.target, "norm": node.target, "exact": True})
    return done


@torch.no_grad()
def scale_output_channels(layer: nn.Module, scale: Tensor) -> None:
    """Multiply each output channel of a conv/linear (weights and bias) by ``scale``: exact. New tensors are written,
    never the old ones in place, so nothing that still holds the old parameter changes."""
    scale = scale.to(layer.weight.dtype).to(layer.weight.device)
    layer.weight = nn.Parameter(layer.weight.detach() * scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach() * scale)


def can_scale_channels(gm: fx.GraphModule, node: fx.Node, neuron_dim: int) -> fx.Node | None:
    """The producer whose output channels are ``node``'s neurons (a conv writes dim 1, a linear the last dim)."""
    source = foldable_producer(gm, node)
    out_shape = shape(source) if source is not None else None
    if out_shape is None:
        return None
    if isinstance(module(gm, source), nn.Conv2d):
        return source if len(out_shape) == 4 and neuron_dim == 1 else None
    return source if neuron_dim == len(out_shape) - 1 else None
