"""Mask bookkeeping on top of ``torch.nn.utils.prune`` (weights only; biases are never pruned)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import prune


def is_pruned(module: nn.Module) -> bool:
    return prune.is_pruned(module) and hasattr(module, "weight_mask")


def weight_of(module: nn.Module, name: str = "weight") -> Tensor:
    """``module.weight`` (or another tensor attribute) as a Tensor: what torch types as ``Tensor | Module``."""
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is a {type(value).__name__}, not a tensor")
    return value


def remaining_mask(module: nn.Module) -> Tensor:
    """True where the weight is still alive."""
    if is_pruned(module):
        return weight_of(module, "weight_mask").bool()
    return torch.ones_like(weight_of(module), dtype=torch.bool)


def remaining(module: nn.Module) -> int:
    return int(remaining_mask(module).sum())


def remaining_magnitudes(module: nn.Module) -> Tensor:
    """|w| of the weights still alive, flattened (pruned entries excluded, not zeroed)."""
    return weight_of(module).detach().abs()[remaining_mask(module)]


def nonzero_remaining(module: nn.Module) -> int:
    """Alive weights that are not exactly zero (what the EGP code counts as remaining: ``w != 0``)."""
    return int((remaining_mask(module) & (weight_of(module).detach() != 0)).sum())


def mean_abs_nonzero(modules: list[nn.Module]) -> float:
    """mean |w| over the alive, non-zero weights (docs/DESIGN.md step 5's E_l factor)."""
    values = torch.cat([remaining_magnitudes(m) for m in modules])
    values = values[values != 0]
    return float(values.mean()) if values.numel() else 0.0


def prune_smallest(module: nn.Module, n: int) -> None:
    """Remove the ``n`` smallest-magnitude weights among those still alive.

    ``prune``'s container restricts a new unstructured mask to the surviving entries, so an integer amount counts
    among the remaining weights, not among all of them. The scores are passed contiguous because ``prune`` flattens
    them with ``view``, which fails on channels_last weights.
    """
    if n > 0:
        scores = weight_of(module).detach().abs().contiguous()
        prune.l1_unstructured(module, "weight", amount=int(n), importance_scores=scores)


def _recompute_masked_weights(model: nn.Module, args) -> None:
    for module in model.modules():
        if is_pruned(module):
            module.weight = weight_of(module, "weight_orig") * weight_of(module, "weight_mask")


def keep_masked_weights_current(model: nn.Module) -> None:
    """Recompute every pruned layer's ``weight`` (``weight_orig * weight_mask``) at each forward of ``model``.

    ``torch.nn.utils.prune`` recomputes it in a hook of the layer itself, which runs only when the layer is called.
    A model that passes a layer's weight to a function instead (torchvision's Swin hands ``attn.qkv.weight`` and
    ``attn.proj.weight`` to ``shifted_window_attention``) would otherwise use the weight of the moment it was pruned:
    it stops learning, and the second backward pass fails on the freed graph. For layers that are called, their own
    hook recomputes the same product afterwards, so their results do not change. Registered once per model."""
    if _recompute_masked_weights not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_recompute_masked_weights)


def pruned_layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if is_pruned(m)]


def mask_zero_weights(model: nn.Module, types=(nn.Conv2d, nn.Linear)) -> list[str]:
    """Hold every exact-zero weight of ``model``'s conv/linear layers at zero while it trains (a
    ``torch.nn.utils.prune`` mask over the zeros): a collapsed network keeps the sparsity it was pruned to.
    Returns the masked layers' names; :func:`make_permanent` folds the masks away afterwards."""
    masked = []
    for name, module in model.named_modules():
        if isinstance(module, types) and not is_pruned(module) and bool((module.weight == 0).any()):
            prune.custom_from_mask(module, "weight", mask=(module.weight != 0).to(module.weight.dtype))
            masked.append(name)
    return masked


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold masks into plain weights (for export and inference)."""
    for name in pruned_layer_names(model):
        prune.remove(model.get_submodule(name), "weight")
    return model


def overall_sparsity(model: nn.Module, layer_names: list[str]) -> float:
    """Fraction of pruned weights over the given layers, weighted by their sizes."""
    total = alive = 0
    for name in layer_names:
        module = model.get_submodule(name)
        total += weight_of(module).numel()
        alive += remaining(module)
    return 1.0 - alive / total if total else 0.0
