"""collapse(): linearize → fold → propagate constants → remove dead channels → merge → verify, on a torch.fx graph."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_leaves

from ..entropy import LayerStats
from ..metrics import cost_report
from ..pruning.masks import make_permanent
from .activations import linearize_activations
from .channels import remove_dead_channels
from .constants import fold_constants
from .fold import fold_batchnorms
from .graph import CollapseError, bypass, module, record_shapes, tidy, trace, weight_nodes
from .merge import MERGES, merge_chains

PASS_THROUGH = (nn.Identity, nn.Dropout)  # identities in eval mode


@dataclass
class CollapseReport:
    """What collapse did and what it measured on the verification batch (see ``nepenthe.tracking`` for fields)."""

    merge: str
    input_shape: list[int]
    tolerance: float
    units: list[dict] = field(default_factory=list)
    removed_layers: list[str] = field(default_factory=list)  # conv/linear layers no longer in the graph
    operations: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    max_abs_diff: float = 0.0  # collapsed (exact steps) vs the linearized model: must stay within tolerance
    border_diff: float = 0.0  # what the inexact (k×k∘k×k) merges add on top, measured
    linearization_diff: float = 0.0  # linearized vs the given model: the probe's decision, on this batch
    diff_vs_original: float = 0.0  # collapsed vs the given model
    output_scale: float = 0.0  # max |output| of the given model on the batch

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def removed_weight_layers(self) -> int:
        key = "weight_layers_on_longest_path"
        return self.before[key] - self.after[key]


def detached_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works right after pruning in grad mode, when a pruned layer's ``weight`` is a
    non-leaf tensor (``weight_orig * weight_mask``) that deepcopy refuses; the model is not modified."""
    memo = {}
    for m in model.modules():
        for name, value in vars(m).items():
            if isinstance(value, Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def check_merge(merge: str) -> str:
    if merge not in MERGES:
        raise CollapseError(f"collapse merge={merge!r} is not valid; choose one of {', '.join(MERGES)}")
    return merge


def drop_pass_through(gm: fx.GraphModule) -> list[dict]:
    dropped = [n for n in gm.graph.nodes if isinstance(module(gm, n), PASS_THROUGH)]
    for node in dropped:
        bypass(gm, node)
    return [{"op": "drop_identity", "node": n.target, "exact": True} for n in dropped] if dropped else []


@torch.no_grad()
def outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    return [t.float() for t in tree_leaves(model(x)) if isinstance(t, Tensor)]


def max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    return max((float((x - y).abs().max()) for x, y in zip(a, b)), default=0.0)


@torch.no_grad()
def collapse(model: nn.Module, stats: Mapping[str, LayerStats], example_input: Tensor, merge: str = "cost", *,
             layouts: Mapping[str, str] | None = None, tolerance: float = 1e-4):
    """A shallower copy of ``model`` and a :class:`CollapseReport`; ``model`` itself is left untouched.

    ``stats`` are the probe's statistics per activation module path (units absent from it are left alone).
    ``example_input`` is a real batch: it fixes the input size the per-position constants are exact for, and every
    step is verified on it. A step meant to be exact that moves the output by more than ``tolerance`` × max |output|
    raises :class:`CollapseError` instead of returning a wrong model.
    """
    check_merge(merge)
    work = make_permanent(detached_copy(model)).eval()
    gm = trace(work)
    report = CollapseReport(merge, list(example_input.shape), tolerance)
    report.before = cost_report(gm, example_input[:1])
    original = outputs(work, example_input)
    report.output_scale = max((float(t.abs().max()) for t in original), default=0.0)
    bound = tolerance * max(report.output_scale, 1.0)

    def verify(step: str, reference: list[Tensor]) -> float:
        diff = max_diff(outputs(gm, example_input), reference)
        if not diff <= bound:  # also catches NaN
            raise CollapseError(
                f"collapse step {step!r} changed the output by {diff:.3g} (allowed {bound:.3g} = tolerance {tolerance} "
                f"× max |output|) on the verification batch; the uncollapsed model is unaffected, collapse with "
                f"merge='never' or a larger tolerance only if you accept that difference")
        return diff

    layers_before = {n.target for n in weight_nodes(gm)}
    record_shapes(gm, example_input)
    report.operations += fold_batchnorms(gm)
    tidy(gm)
    verify("fold_batchnorm", original)

    record_shapes(gm, example_input)
    report.units = linearize_activations(gm, stats, layouts or {}, example_input.device)
    tidy(gm)
    linearized = outputs(gm, example_input)  # the probe's decision; every later step must reproduce this model
    report.linearization_diff = max_diff(linearized, original)

    for step, run in (("drop_identity", drop_pass_through), ("fold_constant", fold_constants),
                      ("remove_channels", remove_dead_channels),
                      ("merge", lambda g: merge_chains(g, merge, exact_only=True, example=example_input))):
        record_shapes(gm, example_input)
        report.operations += run(gm)
        tidy(gm)
        report.max_abs_diff = verify(step, linearized)

    record_shapes(gm, example_input)
    report.operations += merge_chains(gm, merge, exact_only=False, example=example_input)
    tidy(gm)
    collapsed = outputs(gm, example_input)
    report.border_diff = max_diff(collapsed, linearized)
    report.diff_vs_original = max_diff(collapsed, original)
    report.after = cost_report(gm, example_input[:1])
    report.removed_layers = sorted(layers_before - {n.target for n in weight_nodes(gm)})
    return gm, report
