"""collapse(): linearize → fold → propagate constants → remove dead channels → merge → verify, on a torch.fx graph."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, fx, nn

from ..choices import MERGES
from ..entropy import LayerStats
from ..metrics import cost_report
from ..pruning.masks import make_permanent
from ..records import CollapseReport
from .activations import ReducedActivation, approximation_errors, linearize_activations
from .channels import remove_dead_channels
from .constants import fold_constants
from .fold import fold_batchnorms
from .graph import (
    CollapseError,
    bypass,
    guard_input_size,
    module,
    record_shapes,
    shared_modules,
    tidy,
    trace,
    weight_nodes,
)
from .merge import LATENCY, merge_chains
from .timing import SegmentTimer
from .verify import abs_diff, check_step, mismatch, output_scale, outputs, relative_diff, touched

PASS_THROUGH = (nn.Identity, nn.Dropout)  # identities in eval mode


def detached_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works right after pruning in grad mode, when a pruned layer's ``weight`` is a
    non-leaf tensor (``weight_orig * weight_mask``) that deepcopy refuses; the model is not modified."""
    memo = {}
    for m in model.modules():
        for value in vars(m).values():
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
def fold_batchnorm_only(model: nn.Module, example_input: Tensor, tolerance: float = 1e-4) -> fx.GraphModule:
    """A copy of ``model`` with masks made permanent and every foldable BatchNorm folded into the layer before it,
    and nothing else: the baseline that tells what collapse buys beyond BN folding. Verified on ``example_input``
    like collapse's own first step (raises :class:`CollapseError` beyond ``tolerance`` × max |output|)."""
    x = example_input
    reference = make_permanent(detached_copy(model)).eval()
    gm = trace(make_permanent(detached_copy(model)).eval())
    record_shapes(gm, x)
    records = fold_batchnorms(gm)
    tidy(gm)
    check_step("fold_batchnorm", touched(records), outputs(gm, x), outputs(reference, x), tolerance)
    return gm


@torch.no_grad()
def collapse(model: nn.Module, stats: Mapping[str, LayerStats], example_input: Tensor, merge: str = "cost", *,
             layouts: Mapping[str, str] | None = None, tolerance: float = 1e-4, approximate_activations: bool = False,
             approximate_merges: bool = False, merge_timer: SegmentTimer | None = None):
    """A shallower copy of ``model`` and a :class:`CollapseReport`; ``model`` itself is left untouched.

    ``stats`` are the probe's statistics per activation module path (units absent from it are left alone).
    ``example_input`` is a real batch: it fixes the input size the collapsed model accepts (it checks it), and every
    step is verified on it against a reference built from ``model`` by module swaps alone: the original for BatchNorm
    folding, the original with each unit replaced by its decision (:class:`~.activations.ReducedActivation`) for
    every later step. A step whose outputs differ in shape or dtype, or by more than ``tolerance`` × max |output|,
    raises :class:`CollapseError`. Approximations happen only when asked: ``approximate_activations`` (ReLU6/GELU
    replaced where the probe saw them ON) and ``approximate_merges=True`` (border-ring merges, with ``merge`` cost or
    depth; ``merge='approximate'`` is cost with them); both report their error. :func:`approximate_network` builds
    the approximate network beside the exact one instead. ``merge='latency'`` times every exact candidate merge with
    ``merge_timer`` (default: ONNX Runtime at batch 1, torch's thread count) and keeps those that run faster.
    """
    check_merge(merge)
    if merge == LATENCY and approximate_merges:
        raise CollapseError("collapse merge=latency takes exact merges only; approximate_merges needs merge=cost or "
                            "merge=depth")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise CollapseError(f"collapse tolerance={tolerance!r} is not valid; use a relative bound in (0, 1), e.g. 1e-4")
    x = example_input
    reference = make_permanent(detached_copy(model)).eval()  # changed only by module swaps, never by graph edits
    gm = trace(make_permanent(detached_copy(model)).eval())
    report = CollapseReport(merge, list(x.shape), tolerance, approximate_activations)
    report.before = cost_report(gm, x[:1])
    report.shared_layers = shared_modules(gm)
    original = outputs(reference, x)
    report.output_scale = output_scale(original[0])
    layers_before = {str(n.target) for n in weight_nodes(gm)}

    def step(name: str, run, expected) -> float:
        record_shapes(gm, x)
        records = run(gm)
        tidy(gm)
        report.operations += records
        return check_step(name, touched(records), outputs(gm, x), expected, tolerance)

    step("fold_batchnorm", fold_batchnorms, original)

    record_shapes(gm, x)
    report.units, decisions = linearize_activations(gm, stats, layouts or {}, x.device, approximate_activations)
    tidy(gm)
    errors = approximation_errors(reference, decisions, lambda: reference(x))
    for unit in report.units:
        if unit["unit"] in errors:
            unit["approximation_error"] = errors[unit["unit"]]
    for name, decision in decisions.items():
        reference.set_submodule(name, ReducedActivation(reference.get_submodule(name), decision))
    linearized = outputs(reference, x)
    report.linearization_diff = abs_diff(linearized[0], original[0])
    report.linearization_relative_diff = relative_diff(linearized[0], original[0])
    changed = [u["unit"] for u in report.units if u["action"] != "kept"]
    report.relative_diff = check_step("linearize", changed, outputs(gm, x), linearized, tolerance)

    exact_merge = "cost" if merge == "approximate" else merge
    approximate_merges = approximate_merges or merge == "approximate"
    for name, run in (("drop_identity", drop_pass_through), ("fold_constant", fold_constants),
                      ("remove_channels", remove_dead_channels),
                      ("merge", lambda g: merge_chains(g, exact_merge, exact_only=True, example=x,
                                                       timer=merge_timer))):
        report.relative_diff = step(name, run, linearized)
    collapsed = outputs(gm, x)
    report.max_abs_diff = abs_diff(collapsed[0], linearized[0])

    if approximate_merges and exact_merge != "never":
        record_shapes(gm, x)
        report.operations += merge_chains(gm, exact_merge, exact_only=False, example=x)
        tidy(gm)
        collapsed = outputs(gm, x)
        problem = mismatch(collapsed, linearized)
        if problem:
            raise CollapseError(f"collapse step 'merge' (approximate) changed the output's form: {problem}")
        report.border_diff = abs_diff(collapsed[0], linearized[0])
        report.border_relative_diff = relative_diff(collapsed[0], linearized[0])
    report.diff_vs_original = abs_diff(collapsed[0], original[0])
    report.relative_diff_vs_original = relative_diff(collapsed[0], original[0])
    report.after = cost_report(gm, x[:1])
    report.removed_layers = sorted(layers_before - {str(n.target) for n in weight_nodes(gm)})
    guard_input_size(gm, x)
    return gm, report


@torch.no_grad()
def approximate_network(exact: fx.GraphModule, example_input: Tensor, merge: str = "cost"
                        ) -> tuple[fx.GraphModule, list[dict], float]:
    """A copy of an exact collapse with the border-ring merges ``merge`` (cost or depth) allows also taken:
    ``(network, the merges made, max |its output − the exact output| / max |exact output| on example_input)``. The
    exact network is left as it is; the copy is never verified equal to it, only measured."""
    mode = "cost" if merge == "approximate" else check_merge(merge)
    gm = copy.deepcopy(exact)
    x = example_input
    if mode == "never":
        return gm, [], 0.0
    record_shapes(gm, x)
    operations = merge_chains(gm, mode, exact_only=False, example=x)
    tidy(gm)
    expected, got = outputs(exact, x), outputs(gm, x)
    problem = mismatch(got, expected)
    if problem:
        raise CollapseError(f"collapse step 'merge' (approximate) changed the output's form: {problem}")
    return gm, operations, relative_diff(got[0], expected[0])
