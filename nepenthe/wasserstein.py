"""Max-sliced Wasserstein distance between two point clouds, in pure torch and differentiable (LaCoOT's regulariser).

Each row of ``source`` and ``target`` is one point with equal weight. The clouds are projected on unit directions
(columns of ``projections``); along each direction the p-Wasserstein distance of the two 1-D empirical distributions
is the p-th power mean of the gaps between their quantile functions, and the result is the largest one:
``max_j (W_p^p along θ_j)^(1/p)``. This is what POT's ``ot.sliced.max_sliced_wasserstein_distance`` computes with its
defaults (random Gaussian directions normalised to the unit sphere, drawn afresh on every call, not optimised), and
what the LaCoOT reference code trains with; ``tests/test_wasserstein.py`` checks the value and the gradient against
POT with the same directions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import ConfigError


def random_projections(dim: int, n_projections: int, *, generator: torch.Generator | None = None,
                       device=None, dtype=torch.float32) -> Tensor:
    """``(dim, n_projections)`` unit columns drawn uniformly on the sphere (normalised Gaussians, as POT)."""
    directions = torch.randn(dim, n_projections, generator=generator, dtype=dtype,
                             device=generator.device if generator is not None else device)
    return (directions / directions.norm(dim=0, keepdim=True)).to(device=device)


def _quantile_gaps(u: Tensor, v: Tensor, p: float) -> Tensor:
    """W_p^p per column between the columns of ``u`` (n rows) and ``v`` (m rows), uniform weights."""
    u, v = u.sort(dim=0).values, v.sort(dim=0).values
    n, m = u.shape[0], v.shape[0]
    if n == m:  # the quantile functions step at the same levels: pair the sorted values
        return (u - v).abs().pow(p).mean(dim=0)
    # different sizes: integrate |F_u^-1 - F_v^-1|^p over the merged quantile levels
    levels = torch.cat([torch.arange(1, n + 1, device=u.device, dtype=u.dtype) / n,
                        torch.arange(1, m + 1, device=u.device, dtype=u.dtype) / m]).sort().values
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    iu = torch.searchsorted(torch.arange(1, n + 1, device=u.device, dtype=u.dtype) / n, levels).clamp(max=n - 1)
    iv = torch.searchsorted(torch.arange(1, m + 1, device=u.device, dtype=u.dtype) / m, levels).clamp(max=m - 1)
    return (widths[:, None] * (u[iu] - v[iv]).abs().pow(p)).sum(dim=0)


def max_sliced_wasserstein(source: Tensor, target: Tensor, projections: Tensor | None = None,
                           n_projections: int = 50, p: float = 2, generator: torch.Generator | None = None) -> Tensor:
    """Max-sliced p-Wasserstein distance between the rows of ``source`` (n × d) and ``target`` (m × d).

    ``projections`` is a ``(d, k)`` matrix of unit columns; without it ``n_projections`` random directions are drawn
    (from ``generator`` when given). Inputs of more than two dimensions are flattened per row (one sample = one
    point). Returns a 0-dim tensor; gradients flow to both clouds (nothing is detached), through the direction that
    attains the maximum.
    """
    if p < 1:
        raise ConfigError(f"max_sliced_wasserstein p={p!r} must be >= 1")
    source, target = source.reshape(source.shape[0], -1), target.reshape(target.shape[0], -1)
    if source.shape[1] != target.shape[1]:
        raise ConfigError(f"max_sliced_wasserstein: source points have {source.shape[1]} coordinates and target "
                          f"points {target.shape[1]}; both clouds must live in the same space")
    if source.shape[0] == 0 or target.shape[0] == 0:
        raise ConfigError("max_sliced_wasserstein needs at least one point in each cloud")
    if projections is None:
        if n_projections < 1:
            raise ConfigError(f"max_sliced_wasserstein n_projections={n_projections!r} must be >= 1")
        projections = random_projections(source.shape[1], n_projections, generator=generator, device=source.device,
                                         dtype=source.dtype)
    elif projections.dim() != 2 or projections.shape[0] != source.shape[1]:
        raise ConfigError(f"max_sliced_wasserstein: projections of shape {tuple(projections.shape)} do not match "
                          f"points with {source.shape[1]} coordinates; expected ({source.shape[1]}, n)")
    projections = projections.to(dtype=source.dtype, device=source.device)
    per_direction = _quantile_gaps(source @ projections, target @ projections, p)
    return per_direction.max() ** (1.0 / p)
