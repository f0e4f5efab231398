"""From the kept model to what would be shipped (docs/DESIGN.md steps 9-12).

:func:`collapse_kept` collapses the kept round exactly, each step verified. :func:`measure_collapsed` then measures
what a user would deploy: the collapsed model's accuracy; with the approximate opt-in, the network with border-ring
merges too (its error and accuracy measured on the test set, never assumed), and that network fine-tuned when asked;
each network's latency side by side with the kept (uncollapsed) and the BN-folded-only models in every runtime
(eager PyTorch, torch.compile, ONNX Runtime); and the files: ``collapsed.pt2`` and ``collapsed.onnx`` (verified in
ONNX Runtime against the torch model), ``collapsed_approximate.*`` and ``collapsed_finetuned.*`` beside them.
Both take a :class:`Deployment` (plain values: the kept model, the verification images, the collapse settings, an
assess function); ``run_experiment`` builds it with ``Experiment.deployment()`` after the loop, and
``python -m nepenthe_cli.collapse`` does the same on a saved run.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import fx, nn

from .collapse import approximate_network, collapse, fold_batchnorm_only, save_collapsed
from .collapse.export import OnnxRuntimeModel, export_onnx, onnx_relative_diff
from .collapse.measure import latency_by_runtime
from .collapse.pipeline import detached_copy
from .collapse.renormalize import fold_batchnorms_back, with_batchnorms
from .collapse.timing import SegmentTimer
from .collapse.verify import outputs, relative_diff
from .config import CollapseConfig
from .entropy import LayerStats
from .errors import NepentheError, NonFiniteLossError
from .loop import DISTILL_TERM
from .metrics import cost_report
from .pruning.masks import make_permanent, mask_zero_weights
from .records import CollapseReport, CollapseResult, ShippedNetwork
from .rundir import RunDir


@dataclass
class Deployment:
    """What collapsing and shipping a kept model needs, as plain values: built by ``Experiment.deployment()`` for a
    configured run, or directly for a model of your own."""

    model: nn.Module  # the kept round's model (masks attached or made permanent)
    batch: torch.Tensor  # real inputs of the deployment size, as the model sees them: the collapse is verified on them
    settings: CollapseConfig  # merge, tolerance, onnx, runtimes, the opt-ins (the config's collapse.* group)
    assess: Callable[..., dict]  # assess(model, fp32=False) -> {"val_acc", "test_acc", ...} in percent
    layouts: dict[str, str] = field(default_factory=dict)  # unit -> where its neurons are (units.unit_layouts)
    device: torch.device = torch.device("cpu")
    amp: torch.dtype | None = None  # the run's autocast dtype; None: float32
    precision: str = "fp32"  # its name in the records
    # (network, epochs, lr) -> fit's result (train_loss, train_ce_loss, train_terms): trains it in place, with
    # distillation from the dense network when collapse.finetune.distill asks
    finetune: Callable[[nn.Module, int, float], dict] | None = None
    finetune_lr: float | None = None  # collapse.finetune.lr, else finetune.lr, else train.lr
    train_images: Callable[[], torch.Tensor] | None = None  # training images as the model sees them (batch-norm
    #                                                          statistics of collapse.finetune.batchnorm)


def collapse_kept(d: Deployment, stats: dict[str, LayerStats]) -> tuple[nn.Module, CollapseReport]:
    """Collapse ``d.model`` (the kept round) exactly with its probe's ``stats`` on ``d.batch``; with
    ``merge=approximate`` the exact merges of ``cost`` (the approximate ones are :func:`measure_collapsed`'s)."""
    c = d.settings
    merge = "cost" if c.merge == "approximate" else c.merge
    return collapse(d.model, stats, d.batch, merge, layouts=d.layouts, tolerance=c.tolerance,
                    approximate_activations=c.approximate_activations,
                    merge_timer=SegmentTimer(runtime=c.merge_runtime) if merge == "latency" else None)


def measure_collapsed(d: Deployment, small: nn.Module, report: CollapseReport, out_dir: str | Path | None = None,
                      warn=None) -> CollapseResult:
    """Accuracy, the approximate and fine-tuned networks when asked, latency per runtime side by side, and the files
    in ``out_dir``. ``warn(message)`` hears what could not be done (an ONNX export that failed): the run goes on."""
    c, warn, batch = d.settings, warn or (lambda message: None), d.batch
    scores = d.assess(small)
    result = CollapseResult(**vars(report), test_acc=scores["test_acc"], val_acc=scores["val_acc"],
                            precision=d.precision)
    # the kept model timed as deployed: masks folded once, not re-applied on every call
    kept = make_permanent(detached_copy(d.model)).eval()
    if d.amp is not None:
        precision_check(d, kept, small, result)
    # BN folding alone is timed too, so that what collapse itself buys is not credited with BN folding's gain
    networks = {"kept": kept, "bn_folded": fold_batchnorm_only(d.model, batch, c.tolerance),
                "collapsed": small}
    shipped = {"collapsed": small}
    if c.approximate_merges or c.merge == "approximate":
        approx, operations, diff = approximate_network(cast(fx.GraphModule, small), batch, c.merge)
        result.approximate = measured_network(d, approx, relative_diff=diff, operations=operations)
        networks["approximate"] = shipped["approximate"] = approx
    if c.finetune.epochs and d.finetune is not None:
        base = networks.get("approximate", small)
        before = result.approximate if result.approximate is not None else result
        try:
            tuned, fitted = finetune_collapsed(d, base)
        except NonFiniteLossError as exc:  # an opt-in extra must not cost the run its summary
            hint = "" if c.finetune.batchnorm else "; collapse.finetune.batchnorm=true steadies it"
            warn(f"the collapsed network was not fine-tuned: {exc} (collapse.finetune.lr{hint})")
        else:
            distill = c.finetune.distill
            result.finetuned = measured_network(
                d, tuned, epochs=c.finetune.epochs, val_acc_before=before.val_acc, test_acc_before=before.test_acc,
                relative_diff=_relative(tuned, small, batch), lr=d.finetune_lr, batchnorm=c.finetune.batchnorm,
                distill_weight=distill.weight, distill_temperature=distill.temperature if distill.weight else None,
                train_loss=fitted.get("train_loss"), train_ce_loss=fitted.get("train_ce_loss"),
                train_distill_loss=fitted.get("train_terms", {}).get(DISTILL_TERM))
            networks["finetuned"] = shipped["finetuned"] = tuned
    if out_dir is not None:
        save_files(d, shipped, RunDir(out_dir), result, warn)
    measure_latency(d, networks, result)
    return result


def measured_network(d: Deployment, network: nn.Module, **fields) -> ShippedNetwork:
    """A shipped network's cost and its own accuracy on the validation and test splits."""
    scores = d.assess(network)
    return ShippedNetwork(cost=cost_report(network, d.batch[:1]), test_acc=scores["test_acc"],
                          val_acc=scores["val_acc"], **fields)


@torch.no_grad()
def _relative(network: nn.Module, reference: nn.Module, batch: torch.Tensor) -> float:
    return relative_diff(outputs(network, batch)[0], outputs(reference, batch)[0])


def finetune_collapsed(d: Deployment, network: nn.Module) -> tuple[nn.Module, dict]:
    """A copy of ``network`` (a collapsed graph: a trainable module) fine-tuned ``collapse.finetune.epochs`` epochs by
    ``d.finetune`` at ``d.finetune_lr``, and what the fit reported. With ``collapse.finetune.batchnorm`` a batch norm
    sits after every conv while it trains (the identity at the start) and is folded back exactly afterwards
    (:mod:`nepenthe.collapse.renormalize`): the network shipped has the collapsed network's layers, MACs and zeros
    (a conv without a bias gains one from the fold)."""
    assert d.finetune is not None and d.finetune_lr is not None, "a deployment without a way to fine-tune"
    tuned, inserted = copy.deepcopy(network), cast(list[str], [])
    if d.settings.finetune.batchnorm:
        images = d.train_images() if d.train_images is not None else d.batch
        tuned, inserted = with_batchnorms(cast(fx.GraphModule, tuned), images)
    for parameter in tuned.parameters():
        parameter.requires_grad_(True)
    mask_zero_weights(tuned)  # pruned weights stay pruned: the same sparsity, the same non-zero MACs
    fitted = d.finetune(tuned, d.settings.finetune.epochs, d.finetune_lr)
    make_permanent(tuned)
    if inserted:
        tuned = fold_batchnorms_back(cast(fx.GraphModule, tuned), inserted)
    return tuned.eval(), fitted or {}


def save_files(d: Deployment, shipped: dict[str, nn.Module], out_dir: RunDir, result: CollapseResult,
               warn) -> None:
    """``<name>.pt2`` for every shipped network, and ``<name>.onnx`` verified in ONNX Runtime when collapse.onnx."""
    c, batch = d.settings, d.batch
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


def measure_latency(d: Deployment, networks: dict[str, nn.Module], result: CollapseResult) -> None:
    """Every network in every configured runtime, side by side, in the run's precision (ONNX Runtime: float32)."""
    c, batch = d.settings, d.batch
    timed: dict[str, nn.Module] = networks
    if d.amp is not None:
        timed = {name: InRunPrecision(model, d.device.type, d.amp) for name, model in networks.items()}
    with tempfile.TemporaryDirectory(prefix="nepenthe-onnx-") as onnx_dir:
        stats, notes = latency_by_runtime(timed, batch[:1], c.latency_batches, c.runtimes, onnx_dir=onnx_dir,
                                          onnx_models=networks, min_run_time=c.latency_min_run_time,
                                          rounds=c.latency_rounds)
    if d.amp is not None and notes.get("onnxruntime") == "ok":
        notes["onnxruntime"] = "ok (float32: the exported graph does not run under the run's autocast)"
    result.latency_ms = {rt: {m: {b: s["median"] for b, s in per.items()} for m, per in models.items()}
                         for rt, models in stats.items()}
    result.latency_iqr_ms = {rt: {m: {b: s["p75"] - s["p25"] for b, s in per.items()} for m, per in models.items()}
                             for rt, models in stats.items()}
    repeats = [int(s["n"]) for models in stats.values() for per in models.values() for s in per.values()]
    result.latency_repeats = min(repeats, default=None)
    result.latency_threads, result.latency_device = torch.get_num_threads(), str(d.device)
    result.latency_precision, result.runtimes = d.precision, notes


@torch.no_grad()
def precision_check(d: Deployment, kept: nn.Module, small: nn.Module, result: CollapseResult) -> None:
    """Collapse is verified in float32; a reduced-precision run rounds the two graphs differently. Measure both: the
    output difference under the run's autocast, and both models' accuracy in float32, where collapse is exact, so
    the accuracy the summary reports equals what was verified."""
    with torch.autocast(d.device.type, dtype=d.amp):
        ours, theirs = outputs(small, d.batch)[0], outputs(kept, d.batch)[0]
    full, before = d.assess(small, fp32=True), d.assess(kept, fp32=True)
    result.relative_diff_run_precision = relative_diff(ours, theirs)
    result.test_acc_fp32, result.val_acc_fp32 = full["test_acc"], full["val_acc"]
    result.kept_test_acc_fp32, result.kept_val_acc_fp32 = before["test_acc"], before["val_acc"]


class InRunPrecision(nn.Module):
    """A model called under the run's autocast, so latency is timed in the precision the run computes in."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)
