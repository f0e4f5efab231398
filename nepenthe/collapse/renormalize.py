"""Batch norms put back into a collapsed network while it fine-tunes, then folded away again (docs/DESIGN.md step
13).

Collapse folds every batch norm into its conv, so a collapsed network fine-tunes bare, and the study measured what that
does: its test accuracy fell in all six runs tried. :func:`with_batchnorms` puts a ``BatchNorm2d`` after every conv
again, set to the identity: running mean and variance are the conv's output statistics on real images, and its affine
weight and bias are their standard deviation and mean, so in eval mode it returns its input (to rounding) and in
training mode it normalises by the batch's statistics and scales back, which is what steadies training. After
fine-tuning, :func:`fold_batchnorms_back` folds each one into its conv with ``torch.nn.utils.fusion`` (exact), so the
shipped network has the collapsed network's layers and cost.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import Tensor, fx, nn

from .fold import fold_batchnorms
from .graph import CollapseError, exclusive_modules, insert_after, is_module, tidy

RENORM_SUFFIX = "_renorm"  # the inserted batch norms' names: <conv name with _ for .>_renorm


def _convs(gm: fx.GraphModule) -> list[fx.Node]:
    """Conv nodes whose module is called once and owns its tensors: a batch norm after them folds back exactly."""
    exclusive = exclusive_modules(gm)
    return [n for n in gm.graph.nodes if is_module(gm, n, (nn.Conv2d,)) and n.target in exclusive]


@torch.no_grad()
def _output_statistics(gm: fx.GraphModule, nodes: list[fx.Node], images: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel mean and (biased) variance of each conv's output on ``images``, in eval mode."""
    found: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []
    for node in nodes:
        def keep(module, args, output, name=str(node.target)):
            values = output.detach().float()
            found[name] = (values.mean(dim=(0, 2, 3)), values.var(dim=(0, 2, 3), unbiased=False))
        handles.append(gm.get_submodule(str(node.target)).register_forward_hook(keep))
    was_training = gm.training
    try:
        gm.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
        gm.train(was_training)
    return found


def identity_batchnorm(mean: Tensor, var: Tensor, like: nn.Conv2d) -> nn.BatchNorm2d:
    """A ``BatchNorm2d`` that returns its input in eval mode: running statistics ``mean``/``var``, weight
    ``sqrt(var + eps)`` and bias ``mean``."""
    norm = nn.BatchNorm2d(mean.numel()).to(device=like.weight.device, dtype=like.weight.dtype)
    assert norm.running_mean is not None and norm.running_var is not None  # track_running_stats: the default
    with torch.no_grad():
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.weight.copy_(torch.sqrt(var + norm.eps))
        norm.bias.copy_(mean)
    return norm


def with_batchnorms(network: fx.GraphModule, images: Tensor) -> tuple[fx.GraphModule, list[str]]:
    """A copy of ``network`` with an identity :func:`identity_batchnorm` after every conv it calls once (statistics
    from ``images``, real inputs as the network sees them); returns it and the inserted modules' names."""
    gm = copy.deepcopy(network)
    nodes = _convs(gm)
    statistics = _output_statistics(gm, nodes, images)
    inserted = []
    for node in nodes:
        conv = cast(nn.Conv2d, gm.get_submodule(str(node.target)))
        name = str(node.target).replace(".", "_") + RENORM_SUFFIX
        if hasattr(gm, name):
            raise CollapseError(f"{name} already exists in the collapsed network: it holds inserted batch norms")
        gm.add_submodule(name, identity_batchnorm(*statistics[str(node.target)], like=conv))
        norm = insert_after(gm, node, "call_module", name, (node,))
        node.replace_all_uses_with(norm, delete_user_cb=_all_but(norm))
        inserted.append(name)
    gm.graph.lint()
    gm.recompile()
    return gm, inserted


def _all_but(kept: fx.Node):
    def others(user: fx.Node) -> bool:
        return user is not kept
    return others


def fold_batchnorms_back(gm: fx.GraphModule, inserted: list[str]) -> fx.GraphModule:
    """Fold the batch norms :func:`with_batchnorms` inserted into their convs (eval-mode statistics, exact) and
    tidy the graph; every one must fold, or the network would not cost what the collapsed one does."""
    gm.eval()
    folded = {op["norm"] for op in fold_batchnorms(gm)}
    left = sorted(set(inserted) - folded)
    if left:
        raise CollapseError(f"the batch norms {', '.join(left)} inserted for fine-tuning did not fold back")
    return tidy(gm)
