"""From the kept model to what would be shipped (docs/DESIGN.md steps 9-12): the exact collapse, verified step by
step (:func:`collapse_kept`); then the collapsed model's accuracy, its latency side by side with the uncollapsed and
the BN-folded-only models, and the saved file (:func:`measure_collapsed`). ``run_experiment`` calls both after the
loop; ``python -m nepenthe.collapse`` calls the same two on a saved run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .collapse import collapse, fold_batchnorm_only, save_collapsed
from .collapse.measure import latency_stats
from .collapse.pipeline import detached_copy
from .collapse.verify import outputs, relative_diff
from .entropy import LayerStats
from .pruning.masks import make_permanent
from .records import CollapseReport, CollapseResult
from .tracking import COLLAPSED_FILE
from .units import unit_layouts


def collapse_kept(exp, stats: dict[str, LayerStats]) -> tuple[nn.Module, CollapseReport]:
    """Collapse ``exp.model`` (the kept round) with its probe's ``stats`` on the verification batch, as configured."""
    c = exp.cfg.collapse
    return collapse(exp.model, stats, exp.verify_batch(), c.merge, layouts=unit_layouts(exp.units),
                    tolerance=c.tolerance, approximate_activations=c.approximate_activations)


def measure_collapsed(exp, small: nn.Module, report: CollapseReport,
                      out_dir: str | Path | None = None) -> CollapseResult:
    """The collapsed model's accuracy (and, in a reduced-precision run, both models' fp32 accuracy), its latency
    timed side by side with the uncollapsed and the BN-folded-only model, and ``collapsed.pt2`` in ``out_dir``."""
    c = exp.cfg.collapse
    batch = exp.verify_batch()
    scores = exp.assess(small)
    result = CollapseResult(**vars(report), test_acc=scores["test_acc"], val_acc=scores["val_acc"],
                            precision=exp.cfg.hardware.precision)
    # the uncollapsed model timed as deployed: masks folded once, not re-applied on every call
    uncollapsed = make_permanent(detached_copy(exp.model)).eval()
    if exp.amp is not None:
        precision_check(exp, uncollapsed, small, batch, result)
    # BN folding alone is timed too, so that what collapse itself buys is not credited with BN folding's gain
    timed = {"uncollapsed": uncollapsed, "bn_folded": fold_batchnorm_only(exp.model, batch, c.tolerance),
             "collapsed": small}
    if exp.amp is not None:
        timed = {name: InRunPrecision(model, exp.device.type, exp.amp) for name, model in timed.items()}
    stats_ms = latency_stats(timed, batch[:1], c.latency_batches, min_run_time=c.latency_min_run_time,
                             rounds=c.latency_rounds)
    result.latency_ms = {name: {b: s["median"] for b, s in per.items()} for name, per in stats_ms.items()}
    result.latency_iqr_ms = {name: {b: s["p75"] - s["p25"] for b, s in per.items()} for name, per in stats_ms.items()}
    result.latency_repeats = min(s["n"] for per in stats_ms.values() for s in per.values())
    result.latency_threads, result.latency_device = torch.get_num_threads(), str(exp.device)
    result.latency_precision = exp.cfg.hardware.precision
    if out_dir is not None:
        save_collapsed(small, batch, Path(out_dir) / COLLAPSED_FILE)
        result.file = COLLAPSED_FILE
    return result


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
