"""Plain-text per-round table printed while a run progresses (and in the README), and the reporter that prints it."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .estimate import estimate_line
from .records import CollapseResult, RoundRecord, RunEstimate, ShippedNetwork, Summary


def format_entropy(bits: float) -> str:
    """Exact zeros print as ``0``, so a zero-entropy unit is never confused with a small value rounded down."""
    if bits == 0.0:
        return "   0"
    if bits < 0.005:
        return "<.01"
    return f"{bits:4.2f}"


def format_table_header(unit_names: list[str]) -> str:
    legend = ", ".join(f"u{i}={name}" for i, name in enumerate(unit_names))
    cols = " ".join(f"{'u' + str(i):>4}" for i in range(len(unit_names)))
    return f"units: {legend}\nround sparsity  val%   test%   k/N  | entropy (bits): {cols}"


def format_round_row(record: RoundRecord, unit_names: list[str]) -> str:
    entropies = " ".join(format_entropy(record.entropy[name]) for name in unit_names)
    depth = f"{record.k}/{record.N}"
    # a run of your own (nepenthe.prune) may measure validation only
    test = f"{record.test_acc:6.2f}" if record.test_acc is not None else "     -"
    return (f"{record.round:5d} {100 * record.sparsity:7.2f}% {record.val_acc:6.2f} {test} "
            f"{depth:>5} |                 {entropies}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def format_collapse(section: CollapseResult, kept_test_acc: float | None) -> list[str]:
    """Lines describing the collapse of a summary (``nepenthe.deploy``)."""
    before, after = section.before, section.after
    lines = [
        f"collapsed (merge={section.merge}): weight layers on the longest path {before.weight_layers_on_longest_path} "
        f"-> {after.weight_layers_on_longest_path}, MACs {before.macs / 1e6:.2f} M -> {after.macs / 1e6:.2f} M, "
        f"params {before.params:,} -> {after.params:,}",
        f"  test top-1 {section.test_acc:.2f}% collapsed vs {_pct(kept_test_acc)} kept; max |output "
        f"diff| {section.max_abs_diff:.2g} vs linearized (exact steps), {section.diff_vs_original:.2g} vs "
        f"kept (output scale {section.output_scale:.3g})",
        f"  verified: {section.relative_diff:.2g} of max |output| vs linearized (allowed {section.tolerance:g}); the "
        f"probe's linearization moves it by {section.linearization_relative_diff:.2g}",
    ]
    if section.border_relative_diff:
        lines.append(f"  merge=approximate: border-ring merges add {section.border_relative_diff:.2g} of max |output| "
                     f"(see each merge's interior_relative_diff)")
    approximated = {u["unit"]: u["approximation_error"] for u in section.units if "approximation_error" in u}
    if approximated:
        lines.append("  approximate activations (relative error at the unit): "
                     + ", ".join(f"{name} {err:.2g}" for name, err in approximated.items()))
    left = [u["unit"] for u in section.units if u.get("approximation_declined")]
    if left:
        lines.append("  left in place (not the identity where ON; collapse.approximate_activations=true replaces "
                     f"them): {', '.join(left)}")
    if section.shared_layers:
        lines.append(f"  tied or directly read layers left as they are: {', '.join(section.shared_layers)}")
    if section.relative_diff_run_precision is not None:
        lines.append(f"  in {section.precision} (the run's precision) collapsed vs kept differ by "
                     f"{section.relative_diff_run_precision:.2g} of max |output| (rounding, not collapse); in fp32: "
                     f"test top-1 {section.test_acc_fp32:.2f}% collapsed vs "
                     f"{section.kept_test_acc_fp32:.2f}% kept")
    if section.approximate is not None:
        lines.append(format_network("with approximate merges", section.approximate, before))
    if section.finetuned is not None:
        tuned = section.finetuned
        how = [f"lr {tuned.lr:g}"] if tuned.lr is not None else []
        how += ["batch norms in, folded back"] if tuned.batchnorm else []
        how += [f"distilled (weight {tuned.distill_weight:g}, T {tuned.distill_temperature:g})"] \
            if tuned.distill_weight else []
        lines.append(format_network(f"fine-tuned {tuned.epochs} epochs" + (f" ({', '.join(how)})" if how else ""),
                                    tuned, before))
    lines += format_latency(section)
    if section.file:
        files = section.file + (f" and {section.onnx_file} (ONNX Runtime matches it to "
                                f"{section.onnx_relative_diff:.2g})" if section.onnx_file else "")
        lines.append(f"  saved {files}; load with torch.export.load(path).module()")
    return lines


def format_network(what: str, network: ShippedNetwork, before) -> str:
    text = (f"  {what}: weight layers {before.weight_layers_on_longest_path} -> "
            f"{network.cost.weight_layers_on_longest_path}, MACs {network.cost.macs / 1e6:.2f} M, test top-1 "
            f"{network.test_acc:.2f}% (val {network.val_acc:.2f}%)")
    if network.epochs:
        text += f", before fine-tuning {network.test_acc_before:.2f}% (val {network.val_acc_before:.2f}%)"
    return text + f"; differs from the exact collapse by {network.relative_diff:.2g} of max |output|"


def format_latency(section: CollapseResult) -> list[str]:
    """One line per runtime: median ms per batch size, kept -> BN folded -> collapsed (and the others)."""
    lines = []
    for runtime, models in section.latency_ms.items():
        parts = []
        for key in models.get("collapsed", {}):
            chain = " -> ".join(f"{models[m][key]:.3f}" for m in models)
            folded, small = models.get("bn_folded", {}).get(key), models["collapsed"][key]
            gain = f" ({folded / small:.2f}x over BN folding)" if folded else ""
            parts.append(f"{key.replace('_', ' ')}: {chain} ms{gain}")
        lines.append(f"  latency (median, {' -> '.join(models)}) in {runtime} on {section.latency_device or '?'} "
                     f"({section.latency_threads} threads): " + "; ".join(parts))
    skipped = {r: why for r, why in section.runtimes.items() if not why.startswith("ok")}
    for runtime, why in skipped.items():
        lines.append(f"  {runtime}: {why}")
    return lines


def format_summary(summary: Summary) -> list[str]:
    d, f = summary.dense, summary.kept
    assert d is not None and f is not None, "a complete summary has its dense and kept rounds"
    lines = [f"stopped: {summary.stop_reason}; kept round {summary.kept_round} of {summary.rounds_completed}: "
             f"sparsity {100 * f.sparsity:.1f}%, test top-1 {f.test_acc:.2f}% (dense {d.test_acc:.2f}%), "
             f"zero-entropy units {summary.depth}"]
    dense, kept = summary.cost.dense, summary.cost.kept
    kept_macs = "" if kept.macs == dense.macs else f", {kept.macs / 1e6:.2f} M kept"  # blocks replaced by identities
    depth = str(kept.weight_layers_on_longest_path)
    if kept.weight_layers_on_longest_path != dense.weight_layers_on_longest_path:
        depth = f"{dense.weight_layers_on_longest_path} dense, {depth} kept"
    lines.append(f"MACs per input: {dense.macs / 1e6:.2f} M dense{kept_macs}, {kept.macs_nonzero / 1e6:.2f} M at "
                 f"non-zero weights; weight layers on the longest path: {depth}")
    if summary.collapse is not None:
        lines += format_collapse(summary.collapse, f.test_acc)
    return lines


PRETRAINED_IN_PAPERS = ("swin_t", "vgg16_bn")  # conf/experiment presets fine-tune these from ImageNet weights


def describe_run(exp, run_dir) -> list[str]:
    """The start banner: what is about to run, where, and how much training it can take at most."""
    import torch

    cfg = exp.cfg
    stop_rule = exp.method.stop_rule(cfg.stop, exp.model)  # a method may stop on its own terms (LaCoOT)
    params = sum(p.numel() for p in exp.model.parameters())
    sizes = exp.data.sizes()
    dense, per_round = exp.epochs_for(0), exp.epochs_for(1)
    images = sizes["train"] * sum(exp.epochs_for(r) for r in range(stop_rule.max_rounds + 1))
    weights = cfg.model.kwargs.get("weights")
    start = f"from {weights}" if weights else "from scratch"
    if not weights and cfg.model.name in PRETRAINED_IN_PAPERS:
        start += (f" (the published protocols start from ImageNet weights: save them to "
                  f"weights/{cfg.model.name}_imagenet.pth as docs/running.md shows, then "
                  f"model.kwargs.weights=that path)")
    stop = f"stop when val drops > {stop_rule.max_drop:g} pts below dense"
    if stop_rule.target_zero_units is not None:
        stop += f" or at {stop_rule.target_zero_units} zero-entropy units"
    return [
        f"{cfg.model.name}: {params / 1e6:.2f} M params, {len(exp.units)} units, {start} | {cfg.dataset.name} "
        f"(train/val/test {sizes['train']:,}/{sizes['val']:,}/{sizes['test']:,}, root {cfg.dataset.root or '-'})",
        f"{exp.device} {cfg.hardware.precision}, {torch.get_num_threads()} threads{_processes(exp.collective)} | "
        f"{cfg.pruning.method} ratio "
        f"{cfg.pruning.ratio:g} | dense {dense} epochs, then up to {stop_rule.max_rounds} rounds of {per_round} "
        f"epochs; {stop} | at most {images:,} training images",
        f"run directory: {run_dir}",
    ]


def _processes(collective) -> str:
    """`` x N processes (backend)`` in a distributed run, else nothing."""
    return f" x {collective.describe()}" if collective.world > 1 else ""


class ConsoleReporter:
    """Prints what :func:`nepenthe.loop.run_rounds` reports: the round table as it grows, then the summary."""

    def __init__(self, out=None, advice: Callable[[RunEstimate], str | None] | None = None):
        """``advice(estimate)``: a line to add under the estimate (train.py names the CPU-scale preset of a model
        whose run would take hours on a CPU), or None."""
        self.out = out or sys.stdout
        self.names: list[str] = []
        self.advice = advice

    def _print(self, *lines: str) -> None:
        for line in lines:
            print(line, file=self.out, flush=True)

    def banner(self, lines: list[str]) -> None:
        self._print(*lines)

    def started(self, unit_names: list[str]) -> None:
        self.names = list(unit_names)
        self._print(format_table_header(self.names))

    def resumed(self, records: list[RoundRecord], where: str) -> None:
        self._print(*(format_round_row(r, self.names) for r in records))
        self._print(f"resumed after round {records[-1].round} from {where}")

    def resumed_in_round(self, round_index: int, fit_state: dict, where: str) -> None:
        batch = fit_state.get("batch")
        position = (f"at epoch {fit_state['epoch'] + 1}/{fit_state['epochs']}, batch {batch} (a signal stopped it "
                    f"there)" if batch else f"after epoch {fit_state['epoch']}/{fit_state['epochs']}")
        self._print(f"resuming round {round_index} {position} from {where}")

    def estimate(self, estimate: RunEstimate) -> None:
        self._print(estimate_line(estimate))
        advice = self.advice(estimate) if self.advice is not None else None
        if advice:
            self._print(advice)

    def round(self, record: RoundRecord) -> None:
        self._print(format_round_row(record, self.names))

    def warning(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def finished(self, summary: Summary) -> None:
        self._print(*format_summary(summary))

    def already_complete(self, run_dir, summary: Summary) -> None:
        self._print(f"{run_dir} is complete; delete it or pass resume=false to run again", *format_summary(summary))
