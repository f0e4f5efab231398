"""How many weights to remove where: pure functions over numbers, no modules.

``nepenthe_allocation`` is docs/DESIGN.md step 5 (NEPENTHE/EGP): per unit ``E_l = H_l · mean|w_l|``, irrelevance
``I_l = T / E_l`` with ``T = Σ E``, shares ``softmax(I)`` of the budget ``B = ratio · Σ nnz``; a unit whose share
exceeds what it has left is pruned to 100 %, leaves the pool with its energy and its weights are taken off ``B``;
repeat until nobody is capped.

``rounding`` says how the real-valued shares become weight counts: ``nearest`` (ours) rounds the budget to
``round(ratio · Σ nnz)`` and hands the shares' remainders to the largest fractions, so the counts add up to the
budget exactly; ``floor`` keeps the budget real-valued and truncates each share with ``int()``, as the EGP code does
(its counts add up to a few weights less, and a share within a fraction of a weight of a unit's size can be capped
under one rule and not the other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..choices import ROUNDINGS
from ..errors import bad_option


def check_ratio(ratio: float) -> float:
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio < 1.0):
        raise bad_option("pruning.ratio", ratio, "must lie strictly between 0 and 1 (e.g. 0.5)")
    return float(ratio)


def round_preserving_total(shares: Sequence[float], total: int) -> list[int]:
    """Integers that round ``shares`` and sum to ``total`` (largest remainders get the leftover units)."""
    floors = [math.floor(s) for s in shares]
    leftover = total - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: (floors[i] - shares[i], i))
    for i in order[: max(leftover, 0)]:
        floors[i] += 1
    return floors


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise bad_option("pruning.rounding", rounding, f"is not valid; choose one of {', '.join(ROUNDINGS)}")
    return rounding


def nepenthe_allocation(
    entropy: Sequence[float], mean_abs: Sequence[float], nnz: Sequence[int], ratio: float, rounding: str = "nearest"
) -> list[int]:
    """Weights to prune per unit; every unit given must be prunable (entropy > 0, nnz > 0)."""
    ratio, rounding = check_ratio(ratio), check_rounding(rounding)
    if not (len(entropy) == len(mean_abs) == len(nnz)):
        raise ValueError("entropy, mean_abs and nnz must have one entry per unit")
    for h, m, n in zip(entropy, mean_abs, nnz):
        if not (h > 0 and m > 0 and n > 0):
            raise ValueError(f"a prunable unit needs entropy, mean |w| and nnz > 0; got {h}, {m}, {n}")
    energy = [h * m for h, m in zip(entropy, mean_abs)]
    budget = round(ratio * sum(nnz)) if rounding == "nearest" else ratio * sum(nnz)
    counts = [0] * len(nnz)
    pool = list(range(len(nnz)))
    remaining_budget = budget
    while pool:
        total_energy = sum(energy[i] for i in pool)
        irrelevance = [total_energy / energy[i] for i in pool]
        top = max(irrelevance)
        weights = [math.exp(v - top) for v in irrelevance]
        norm = sum(weights)
        shares = [remaining_budget * w / norm for w in weights]
        capped = [i for i, s in zip(pool, shares) if s > nnz[i]]
        if not capped:
            final = (round_preserving_total(shares, int(remaining_budget)) if rounding == "nearest"
                     else [int(s) for s in shares])
            for i, n in zip(pool, final):
                counts[i] = n
            break
        for i in capped:
            counts[i] = nnz[i]
            remaining_budget -= nnz[i]
        pool = [i for i in pool if i not in capped]
    return counts


def smallest_counts(magnitudes: Sequence[Tensor], n: int) -> list[int]:
    """How many of the ``n`` globally smallest magnitudes fall in each tensor (ties broken by position)."""
    sizes = [m.numel() for m in magnitudes]
    if n <= 0 or not sizes:
        return [0] * len(sizes)
    flat = torch.cat([m.detach().flatten().float().cpu() for m in magnitudes])
    if n > flat.numel():
        raise ValueError(f"cannot prune {n} of {flat.numel()} remaining weights")
    chosen = torch.topk(flat, n, largest=False, sorted=False).indices
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.bincount(owner[chosen], minlength=len(sizes)).tolist()


def global_magnitude_allocation(magnitudes: Sequence[Tensor], ratio: float) -> list[int]:
    """IMP: remove ``ratio`` of all remaining weights, smallest |w| first, wherever they are."""
    ratio = check_ratio(ratio)
    total = sum(m.numel() for m in magnitudes)
    return smallest_counts(magnitudes, round(ratio * total))


def uniform_allocation(nnz: Sequence[int], ratio: float) -> list[int]:
    """The same fraction of the remaining weights in every layer."""
    ratio = check_ratio(ratio)
    return [round(ratio * n) for n in nnz]
