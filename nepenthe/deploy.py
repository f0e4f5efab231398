"""From the kept model to what would be shipped (docs/DESIGN.md steps 9-12).

:func:`collapse_kept` collapses the kept round exactly, each step verified. :func:`measure_collapsed` then measures
what a user would deploy: the collapsed model's accuracy; with the approximate opt-in, the network with border-ring
merges too (its error and accuracy measured on the test set, never assumed), and that network fine-tuned when asked;
each network's latency side by side with the uncollapsed and the BN-folded-only models in every runtime
(eager PyTorch, torch.compile, ONNX Runtime); and the files: ``collapsed.pt2`` and ``collapsed.onnx`` (verified in
ONNX Runtime against the torch model), ``collapsed_approximate.*`` and ``collapsed_finetuned.*`` beside them.
``run_experiment`` calls both after the loop; ``python -m nepenthe_cli.collapse`` calls the same two on a saved run.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import cast

import torch
from torch import fx, nn

from .collapse import approximate_network, collapse, fold_batchnorm_only, save_collapsed
from .collapse.export import OnnxRuntimeModel, export_onnx, onnx_relative_diff
from .collapse.measure import latency_by_runtime
from .collapse.pipeline import detached_copy
from .collapse.verify import outputs, relative_diff
from .engine import fit, seed_everything
from .entropy import LayerStats
from .errors import NepentheError, NonFiniteLossError
from .metrics import cost_report
from .pruning.masks import make_permanent
from .records import CollapseReport, CollapseResult, ShippedNetwork
from .rundir import RunDir
from .units import unit_layouts

FINETUNE_SEED_OFFSET = 777_777  # the collapsed network's fine-tuning draws, apart from every round's


def collapse_kept(exp, stats: dict[str, LayerStats]) -> tuple[nn.Module, CollapseReport]:
    """Collapse ``exp.model`` (the kept round) exactly with its probe's ``stats`` on the verification batch; with
    ``merge=approximate`` the exact merges of ``cost`` (the approximate ones are :func:`measure_collapsed`'s)."""
    c = exp.cfg.collapse
    merge = "cost" if c.merge == "approximate" else c.merge
    return collapse(exp.model, stats, exp.verify_batch(), merge, layouts=unit_layouts(exp.units),
                    tolerance=c.tolerance, approximate_activations=c.approximate_activations)


def measure_collapsed(exp, small: nn.Module, report: CollapseReport, out_dir: str | Path | None = None,
                      warn=None) -> CollapseResult:
    """Accuracy, the approximate and fine-tuned networks when asked, latency per runtime side by side, and the files
    in ``out_dir``. ``warn(message)`` hears what could not be done (an ONNX export that failed): the run goes on."""
    c, warn = exp.cfg.collapse, warn or (lambda message: None)
    batch = exp.verify_batch()
    scores = exp.assess(small)
    result = CollapseResult(**vars(report), test_acc=scores["test_acc"], val_acc=scores["val_acc"],
                            precision=exp.cfg.hardware.precision)
    # the uncollapsed model timed as deployed: masks folded once, not re-applied on every call
    uncollapsed = make_permanent(detached_copy(exp.model)).eval()
    if exp.amp is not None:
        precision_check(exp, uncollapsed, small, batch, result)
    # BN folding alone is timed too, so that what collapse itself buys is not credited with BN folding's gain
    networks = {"uncollapsed": uncollapsed, "bn_folded": fold_batchnorm_only(exp.model, batch, c.tolerance),
                "collapsed": small}
    shipped = {"collapsed": small}
    if c.approximate_merges or c.merge == "approximate":
        approx, operations, diff = approximate_network(cast(fx.GraphModule, small), batch, c.merge)
        result.approximate = measured_network(exp, approx, batch, relative_diff=diff, operations=operations)
        networks["approximate"] = shipped["approximate"] = approx
    if c.finetune.epochs:
        base = networks.get("approximate", small)
        before = result.approximate if result.approximate is not None else result
        try:
            tuned = finetune_collapsed(exp, base)
        except NonFiniteLossError as exc:  # an opt-in extra must not cost the run its summary
            warn(f"the collapsed network was not fine-tuned: {exc} (collapse.finetune.lr; a collapsed network has "
                 f"no batch norm left to steady it)")
        else:
            result.finetuned = measured_network(exp, tuned, batch, epochs=c.finetune.epochs,
                                                val_acc_before=before.val_acc, test_acc_before=before.test_acc,
                                                relative_diff=_relative(tuned, small, batch))
            networks["finetuned"] = shipped["finetuned"] = tuned
    if out_dir is not None:
        save_files(exp, shipped, batch, RunDir(out_dir), result, warn)
    measure_latency(exp, networks, batch, result)
    return result


def measured_network(exp, network: nn.Module, batch: torch.Tensor, **fields) -> ShippedNetwork:
    """A shipped network's cost and its own accuracy on the validation and test splits."""
    scores = exp.assess(network)
    return ShippedNetwork(cost=cost_report(network, batch[:1]), test_acc=scores["test_acc"], val_acc=scores["val_acc"],
                          **fields)


@torch.no_grad()
def _relative(network: nn.Module, reference: nn.Module, batch: torch.Tensor) -> float:
    return relative_diff(outputs(network, batch)[0], outputs(reference, batch)[0])


def finetune_collapsed(exp, network: nn.Module) -> nn.Module:
    """A copy of ``network`` (a collapsed graph: a trainable module) fine-tuned collapse.finetune.epochs epochs on the
    training split with the run's optimizer settings (lr: collapse.finetune.lr, else finetune.lr, else train.lr)."""
    cfg, c = exp.cfg, exp.cfg.collapse
    tuned = copy.deepcopy(network)
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    plan = exp.training_plan(1)
    lr = c.finetune.lr or cfg.finetune.lr or cfg.train.lr
    plan = replace(plan, train=replace(plan.train, epochs=c.finetune.epochs, lr=lr, milestones=[]),
                   desc="collapsed fine-tune", compile=False)
    seed_everything(cfg.seed * 1000 + FINETUNE_SEED_OFFSET)
    fit(tuned, exp.train_loader, plan)
    return tuned.eval()


def save_files(exp, shipped: dict[str, nn.Module], batch: torch.Tensor, out_dir: RunDir, result: CollapseResult,
               warn) -> None:
    """``<name>.pt2`` for every shipped network, and ``<name>.onnx`` verified in ONNX Runtime when collapse.onnx."""
    c = exp.cfg.collapse
    out_dir.clear_networks()  # an older collapse's files (an .onnx this one does not write) must not stay beside
    for name, network in shipped.items():
        path = out_dir.network(name)
        save_collapsed(network, batch, path)
        onnx_file = None
        if c.onnx:
            onnx_file = ship_onnx(network, batch, out_dir.network(name, ".onnx"), c.tolerance, result, name, warn)
        if name == "collapsed":
            result.file, result.onnx_file = path.name, onnx_file
        else:
            target = result.approximate if name == "approximate" else result.finetuned
            assert target is not None, f"the {name} network is shipped only once it is measured"
            target.file, target.onnx_file = path.name, onnx_file


def ship_onnx(network: nn.Module, batch: torch.Tensor, path: Path, tolerance: float, result: CollapseResult,
              name: str, warn) -> str | None:
    """Export, check and verify in ONNX Runtime against the torch network; a failure is one warning and no file."""
    try:
        export_onnx(network, batch, path)
        diff = onnx_relative_diff(OnnxRuntimeModel(path), network, batch)
    except NepentheError as exc:
        path.unlink(missing_ok=True)
        warn(f"no {path.name}: {exc}")
        return None
    if diff > tolerance:
        path.unlink(missing_ok=True)
        warn(f"no {path.name}: ONNX Runtime differs from the torch model by {diff:.2g} of max |output| (allowed "
             f"{tolerance:g})")
        return None
    if name == "collapsed":
        result.onnx_relative_diff = diff
    return path.name


def measure_latency(exp, networks: dict[str, nn.Module], batch: torch.Tensor, result: CollapseResult) -> None:
    """Every network in every configured runtime, side by side, in the run's precision (ONNX Runtime: float32)."""
    c = exp.cfg.collapse
    timed = networks
    if exp.amp is not None:
        timed = {name: InRunPrecision(model, exp.device.type, exp.amp) for name, model in networks.items()}
    with tempfile.TemporaryDirectory(prefix="nepenthe-onnx-") as onnx_dir:
        stats, notes = latency_by_runtime(timed, batch[:1], c.latency_batches, c.runtimes, onnx_dir=onnx_dir,
                                          onnx_models=networks, min_run_time=c.latency_min_run_time,
                                          rounds=c.latency_rounds)
    if exp.amp is not None and notes.get("onnxruntime") == "ok":
        notes["onnxruntime"] = "ok (float32: the exported graph does not run under the run's autocast)"
    result.latency_ms = {rt: {m: {b: s["median"] for b, s in per.items()} for m, per in models.items()}
                         for rt, models in stats.items()}
    result.latency_iqr_ms = {rt: {m: {b: s["p75"] - s["p25"] for b, s in per.items()} for m, per in models.items()}
                             for rt, models in stats.items()}
    repeats = [int(s["n"]) for models in stats.values() for per in models.values() for s in per.values()]
    result.latency_repeats = min(repeats, default=None)
    result.latency_threads, result.latency_device = torch.get_num_threads(), str(exp.device)
    result.latency_precision, result.runtimes = exp.cfg.hardware.precision, notes


@torch.no_grad()
def precision_check(exp, uncollapsed: nn.Module, small: nn.Module, batch: torch.Tensor, result: CollapseResult) -> None:
    """Collapse is verified in float32; a reduced-precision run rounds the two graphs differently. Measure both: the
    output difference under the run's autocast, and both models' accuracy in float32, where collapse is exact, so
    the accuracy the summary reports equals what was verified."""
    with torch.autocast(exp.device.type, dtype=exp.amp):
        ours, theirs = outputs(small, batch)[0], outputs(uncollapsed, batch)[0]
    full, before = exp.assess(small, fp32=True), exp.assess(uncollapsed, fp32=True)
    result.relative_diff_run_precision = relative_diff(ours, theirs)
    result.test_acc_fp32, result.val_acc_fp32 = full["test_acc"], full["val_acc"]
    result.uncollapsed_test_acc_fp32, result.uncollapsed_val_acc_fp32 = before["test_acc"], before["val_acc"]


class InRunPrecision(nn.Module):
    """A model called under the run's autocast, so latency is timed in the precision the run computes in."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)
