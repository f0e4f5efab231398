"""Output comparison for collapse: same structure, shapes and dtypes, and a bound relative to the output's own size.

A relative bound (no floor) matters: with ``tolerance × max(scale, 1)`` an output of size 1e-4 could be entirely wrong
and pass. Broadcasting is never used to compare, so a step that changes an output's shape fails verification.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .graph import CollapseError


@torch.no_grad()
def outputs(model: nn.Module, x: Tensor) -> tuple[list[Tensor], object]:
    """The model's output tensors (in order) and the structure that holds them."""
    leaves, spec = tree_flatten(model(x))
    return [t for t in leaves if isinstance(t, Tensor)], spec


def output_scale(expected: list[Tensor]) -> float:
    return max((float(t.detach().abs().max()) for t in expected if t.numel()), default=0.0)


def abs_diff(got: list[Tensor], expected: list[Tensor]) -> float:
    """Max |got − expected| over all outputs, in float64 (assumes equal shapes; see :func:`relative_diff`)."""
    worst = 0.0
    for g, e in zip(got, expected):
        if g.numel():
            d = float((g.double() - e.double()).abs().max())
            worst = math.inf if math.isnan(d) else max(worst, d)
    return worst


def mismatch(got: tuple[list[Tensor], object], expected: tuple[list[Tensor], object]) -> str | None:
    """Why two outputs cannot be compared value by value (structure, count, shape or dtype), or None."""
    (g_leaves, g_spec), (e_leaves, e_spec) = got, expected
    if g_spec != e_spec or len(g_leaves) != len(e_leaves):
        return f"the output structure changed ({g_spec} instead of {e_spec})"
    for i, (g, e) in enumerate(zip(g_leaves, e_leaves)):
        if g.shape != e.shape or g.dtype != e.dtype:
            return (f"output {i} is {tuple(g.shape)} {g.dtype} instead of {tuple(e.shape)} {e.dtype}")
    return None


def relative_diff(got: list[Tensor], expected: list[Tensor]) -> float:
    """Max over outputs of max |got − expected| / max |expected| (0/0 is 0, x/0 is inf, NaN is inf)."""
    worst = 0.0
    for g, e in zip(got, expected):
        if not g.numel():
            continue
        diff, scale = abs_diff([g], [e]), float(e.double().abs().max())
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        worst = max(worst, rel)
    return worst


def check_step(step: str, nodes: list[str], got, expected, tolerance: float) -> float:
    """The relative difference of ``got`` from ``expected``; :class:`CollapseError` naming the step and the nodes it
    changed when shapes/dtypes differ or the difference exceeds ``tolerance``."""
    where = f" (at {', '.join(nodes)})" if nodes else ""
    problem = mismatch(got, expected)
    if problem is None:
        rel = relative_diff(got[0], expected[0])
        if rel <= tolerance:
            return rel
        problem = (f"the output moved by {rel:.3g} of its size (max |diff| {abs_diff(got[0], expected[0]):.3g}, "
                   f"allowed {tolerance:g} × max |output| = {tolerance * output_scale(expected[0]):.3g})")
    raise CollapseError(
        f"collapse step {step!r}{where} does not reproduce the model on the verification batch: {problem}; the "
        f"model given is unaffected. Collapse with merge='never', or a larger tolerance only if you accept "
        f"that difference")


def touched(records: list[dict]) -> list[str]:
    """The graph nodes / layers / units a step's records name."""
    names = []
    for record in records:
        if record.get("op") == "merge_declined":  # timed and left as it was (merge=latency)
            continue
        for key in ("node", "layer", "unit", "layers"):
            value = record.get(key)
            if value is not None:
                names.append("+".join(value) if isinstance(value, list) else str(value))
                break
    return names
