"""The long-form table every analysis reads: one :class:`Row` per run × round, built from typed records
(nepenthe.records) whatever their source (run directories, a W&B runs-table export, the W&B API). tables.py and
plots.py read these columns; the columns are the fields of :class:`Row`, defined once here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

import pandas as pd

from nepenthe.pruning.registry import METHODS
from nepenthe.records import CollapseResult, RoundRecord, Summary

NAN = math.nan
TIMED = ("kept", "bn_folded", "collapsed")


def col(doc: str, default=NAN):
    return field(default=default, metadata={"doc": doc})


@dataclass
class Row:
    """One round of one run; the ``kept rows only`` fields are set on the kept (collapsed) round."""

    run_id: str = col("where the run came from (run directory, W&B CSV row, W&B run)", "")
    model: str = col("config model.name", "")
    dataset: str = col("config dataset.name", "")
    method: str = col("config pruning.method", "")
    ratio: float = col("config pruning.ratio")
    seed: int = col("config seed", 0)
    precision: str = col("config hardware.precision", "fp32")
    round: int = col("the round (0: dense)", 0)
    is_kept: bool = col("this is the kept round", False)
    kept_round: float = col("which round the run kept")
    sparsity: float = col("fraction of conv/linear weights pruned")
    val_acc: float = col("validation top-1 (%)")
    test_acc: float = col("test top-1 (%)")
    k: int = col("zero-entropy units", 0)
    N: int = col("units", 0)
    depth: str = col('"k/N"', "")
    entropy: str = col("JSON {unit: bits} for that round (empty when the source lacks it)", "")
    weight_layers_dense: float = col("weight layers on the longest path, dense (kept rows only)")
    weight_layers_kept: float = col("the same, the kept model before the collapse (LaCoOT's removed blocks are "
                                    "already gone there) (kept rows only)")
    weight_layers_collapsed: float = col("the same after the exact collapse (kept rows only)")
    macs_dense: float = col("MACs per input, dense (kept rows only)")
    macs_nonzero: float = col("MACs at non-zero weights of the kept model (kept rows only)")
    macs_collapsed: float = col("MACs of the collapsed model (kept rows only)")
    params_dense: float = col("parameters, dense (kept rows only)")
    params_collapsed: float = col("parameters of the collapsed model (kept rows only)")
    latency_device: str = col("where latency was timed", "")
    latency_threads: float = col("CPU threads while timing")
    latency_precision: str = col("precision latency was timed in", "")
    latency_batch: float = col("the largest batch timed (the bn columns)")
    latency_ms_b1_kept: float = col("median ms at batch 1: the kept model")
    latency_ms_b1_bn_folded: float = col("the same with only batch norms folded")
    latency_ms_b1_collapsed: float = col("the same collapsed")
    latency_iqr_ms_b1_kept: float = col("p75 - p25 of the timed blocks")
    latency_iqr_ms_b1_bn_folded: float = col("p75 - p25 of the timed blocks")
    latency_iqr_ms_b1_collapsed: float = col("p75 - p25 of the timed blocks")
    latency_ms_bn_kept: float = col("median ms at the largest batch: the kept model")
    latency_ms_bn_bn_folded: float = col("the same with only batch norms folded")
    latency_ms_bn_collapsed: float = col("the same collapsed")
    latency_iqr_ms_bn_kept: float = col("p75 - p25 of the timed blocks")
    latency_iqr_ms_bn_bn_folded: float = col("p75 - p25 of the timed blocks")
    latency_iqr_ms_bn_collapsed: float = col("p75 - p25 of the timed blocks")
    latency_ms_b1_kept_compile: float = col("median ms at batch 1 in torch.compile: the kept model")
    latency_ms_b1_bn_folded_compile: float = col("the same with only batch norms folded")
    latency_ms_b1_collapsed_compile: float = col("the same collapsed")
    latency_ms_bn_kept_compile: float = col("median ms at the largest batch in torch.compile: the kept model")
    latency_ms_bn_bn_folded_compile: float = col("the same with only batch norms folded")
    latency_ms_bn_collapsed_compile: float = col("the same collapsed")
    latency_ms_b1_kept_onnxruntime: float = col("median ms at batch 1 in ONNX Runtime: the kept model")
    latency_ms_b1_bn_folded_onnxruntime: float = col("the same with only batch norms folded")
    latency_ms_b1_collapsed_onnxruntime: float = col("the same collapsed")
    latency_ms_bn_kept_onnxruntime: float = col("median ms at the largest batch in ONNX Runtime: the kept model")
    latency_ms_bn_bn_folded_onnxruntime: float = col("the same with only batch norms folded")
    latency_ms_bn_collapsed_onnxruntime: float = col("the same collapsed")
    weight_layers_approximate: float = col("weight layers on the longest path with approximate merges (when built)")
    macs_approximate: float = col("MACs with approximate merges")
    approximate_test_acc: float = col("test top-1 of the network with approximate merges (its own)")
    approximate_val_acc: float = col("its validation top-1")
    finetuned_test_acc: float = col("test top-1 of the collapsed network fine-tuned (collapse.finetune)")
    finetuned_val_acc: float = col("its validation top-1")
    latency_ms_b1_approximate: float = col("median ms at batch 1 in eager PyTorch: the approximate network")
    collapsed_test_acc: float = col("test top-1 of the collapsed model, run precision (kept rows only)")
    collapse_max_abs_diff: float = col("collapsed vs linearized reference")
    collapse_relative_diff: float = col("collapsed vs kept in the run's precision, / max |output|")
    test_acc_fp32: float = col("the kept model's test top-1 in float32")
    collapsed_test_acc_fp32: float = col("the collapsed model's test top-1 in float32")
    regularised_dense: bool = col("round 0 trained with the method's regulariser (LaCoOT, lambda_reg > 0): not the "
                                  "plain dense network the other methods start from", False)
    setting: str = col("JSON of what a sweep may vary for the method: ratio (methods that prune by one), the "
                       "method's own options, distill (finetune.distill.weight); runs of one method that differ here "
                       "are shown apart (qualified_methods)", "")


COLUMNS = [f.name for f in fields(Row)]
FIELD_NAMES = set(COLUMNS)
INTEGER_COLUMNS = ("seed", "round", "k", "N")
NUMBER_COLUMNS = [f.name for f in fields(Row) if f.type == "float"]


def _latency_fields(collapse: CollapseResult) -> dict:
    eager = collapse.latency_ms.get("eager") or {}
    if not eager:
        return {}
    batches = sorted(int(k.removeprefix("batch_")) for k in eager["collapsed"])
    fields_ = {"latency_batch": batches[-1], "latency_device": collapse.latency_device or "",
               "latency_threads": NAN if collapse.latency_threads is None else collapse.latency_threads,
               "latency_precision": collapse.latency_precision or "fp32"}
    for size, batch in (("b1", batches[0]), ("bn", batches[-1])):
        for runtime, timings in collapse.latency_ms.items():
            suffix = "" if runtime == "eager" else f"_{runtime}"
            for model in TIMED:
                fields_[f"latency_ms_{size}_{model}{suffix}"] = (timings.get(model) or {}).get(f"batch_{batch}", NAN)
        spread = collapse.latency_iqr_ms.get("eager") or {}
        for model in TIMED:
            fields_[f"latency_iqr_ms_{size}_{model}"] = (spread.get(model) or {}).get(f"batch_{batch}", NAN)
    fields_["latency_ms_b1_approximate"] = (eager.get("approximate") or {}).get(f"batch_{batches[0]}", NAN)
    return {k: v for k, v in fields_.items() if k in FIELD_NAMES}


def _network_fields(collapse: CollapseResult) -> dict:
    values = {}
    if collapse.approximate is not None:
        a = collapse.approximate
        values.update(weight_layers_approximate=a.cost.weight_layers_on_longest_path, macs_approximate=a.cost.macs,
                      approximate_test_acc=a.test_acc, approximate_val_acc=a.val_acc)
    if collapse.finetuned is not None:
        values.update(finetuned_test_acc=collapse.finetuned.test_acc, finetuned_val_acc=collapse.finetuned.val_acc)
    return values


def _kept_fields(summary: Summary, kept_test_acc: float, precision: str) -> dict:
    cost, collapse = summary.cost, summary.collapse
    values = {
        "weight_layers_dense": cost.dense.weight_layers_on_longest_path, "macs_dense": cost.dense.macs,
        "weight_layers_kept": cost.kept.weight_layers_on_longest_path,
        "macs_nonzero": cost.kept.macs_nonzero, "params_dense": cost.dense.params,
        # a reduced-precision run's fp32 accuracy is known only where collapse measured it (below)
        "test_acc_fp32": kept_test_acc if precision == "fp32" else NAN,
    }
    if cost.collapsed is not None:
        values.update(weight_layers_collapsed=cost.collapsed.weight_layers_on_longest_path,
                      macs_collapsed=cost.collapsed.macs, params_collapsed=cost.collapsed.params)
    if collapse is not None:
        values.update(_latency_fields(collapse))
        values.update(_network_fields(collapse))
        reduced = collapse.relative_diff_run_precision is not None  # fp32 runs: the run's precision is fp32
        values.update(
            collapsed_test_acc=collapse.test_acc, collapse_max_abs_diff=collapse.max_abs_diff,
            collapse_relative_diff=collapse.relative_diff_run_precision if reduced
            else collapse.relative_diff_vs_original,
            collapsed_test_acc_fp32=collapse.test_acc_fp32 if reduced else collapse.test_acc,
            test_acc_fp32=collapse.kept_test_acc_fp32 if reduced else kept_test_acc)
    return values


def run_setting(config: dict) -> str:
    """The run's :attr:`Row.setting`: the knobs of its method that a sweep varies, as sorted JSON."""
    pruning = config.get("pruning") or {}
    entry = METHODS.get(pruning.get("method"))
    knobs: dict = {}
    if entry is not None:
        if entry.uses_ratio:
            knobs["ratio"] = pruning.get("ratio")
        knobs.update({key: pruning.get(key) for key in entry.option_names})
    knobs["distill"] = float(((config.get("finetune") or {}).get("distill") or {}).get("weight") or 0.0)
    return json.dumps(knobs, sort_keys=True)


SHORT_KNOBS = {"lambda_reg": "λ", "distill": "distill", "ratio": "ratio"}


def variant_label(knobs: dict, varying: list[str]) -> str:
    """``λ=0.5, distill=1``: the knobs that differ, numbers in their shortest form."""
    def text(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{SHORT_KNOBS.get(key, key)}={text(knobs.get(key))}" for key in varying)


def qualified_methods(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of one method with different settings (a sweep over its knobs) shown apart: their ``method`` becomes
    ``name[variant]`` (``lacoot[λ=0.5]``), naming only the knobs that differ between them; a frame with one setting
    per method (or none recorded) is returned as it is. Tables and figures group by this column."""
    if "setting" not in frame.columns or not frame["setting"].fillna("").astype(bool).any():
        return frame
    frame = frame.copy()
    settings = frame["setting"].fillna("").astype(str)
    for (_model, _dataset, method), g in frame.groupby(["model", "dataset", "method"]):
        distinct = sorted(set(settings[g.index]) - {""})
        if len(distinct) < 2:
            continue
        parsed = {text: json.loads(text) for text in distinct}
        keys = sorted({key for knobs in parsed.values() for key in knobs})
        varying = [key for key in keys if len({json.dumps(knobs.get(key)) for knobs in parsed.values()}) > 1]
        for index in g.index:
            knobs = parsed.get(settings[index])
            if knobs is not None:
                frame.loc[index, "method"] = f"{method}[{variant_label(knobs, varying)}]"
    return frame


def base_method(name: str) -> str:
    """``lacoot`` of ``lacoot[λ=0.5]`` (a qualified method) or of ``lacoot``."""
    return str(name).split("[", 1)[0]


def variant_of(name: str) -> str:
    """``λ=0.5`` of ``lacoot[λ=0.5]``; "" for a method with one setting."""
    name = str(name)
    return name.split("[", 1)[1].removesuffix("]") if "[" in name else ""


def regularised_dense(config: dict) -> bool:
    """Whether the run's dense round trains with a loss term of its method (LaCoOT's transport regulariser), so its
    round 0 is not the plain dense network: the method's registry entry says, from its options in the config."""
    pruning = config.get("pruning") or {}
    entry = METHODS.get(pruning.get("method"))
    return entry is not None and entry.regularises_dense(entry.resolved(pruning))


def run_rows(run_id: str, config: dict, records: list[RoundRecord], summary: Summary | None) -> list[Row]:
    """The rows of one run from its config, round records and summary. A summary whose status is not "complete" is
    ignored: its run has no kept round yet."""
    summary = summary if summary is not None and summary.status == "complete" else None
    kept_round = summary.kept_round if summary is not None else None
    kept = next((r for r in records if r.round == kept_round), None)
    precision = (config.get("hardware") or {}).get("precision", "fp32")
    regularised, setting = regularised_dense(config), run_setting(config)
    kept_values = _kept_fields(summary, kept.test_acc if kept else NAN, precision) if summary is not None else {}
    rows = []
    for r in sorted(records, key=lambda r: r.round):
        row = Row(run_id=run_id, model=config["model"]["name"], dataset=config["dataset"]["name"],
                  method=config["pruning"]["method"], ratio=config["pruning"]["ratio"], seed=config["seed"],
                  precision=precision, round=int(r.round), is_kept=r.round == kept_round,
                  kept_round=kept_round if kept_round is not None else NAN, sparsity=r.sparsity,
                  val_acc=r.val_acc, test_acc=NAN if r.test_acc is None else r.test_acc, k=int(r.k), N=int(r.N),
                  depth=f"{int(r.k)}/{int(r.N)}", entropy=json.dumps(r.entropy) if r.entropy else "",
                  regularised_dense=regularised, setting=setting)
        if row.is_kept:
            for key, value in kept_values.items():
                setattr(row, key, NAN if value is None else value)
        rows.append(row)
    return rows


def records_from_summary(summary: Summary, last_logged: dict | None = None) -> list[RoundRecord]:
    """Round records rebuilt from a summary alone (a W&B runs-table export): every round from ``trajectory``, the
    dense and kept rounds with their entropy. A run without a complete summary has only what W&B logged last
    (``last_logged``: the flat round keys of its summary)."""
    if summary.status != "complete":
        last = last_logged or {}
        if last.get("round") is None or last.get("test_acc") is None:
            return []
        return [RoundRecord.from_dict(last, schema=2, strict=False)]
    by_round = {int(r): RoundRecord(round=int(r), sparsity=p.sparsity, val_acc=p.val_acc, test_acc=p.test_acc, k=p.k,
                                    N=p.N) for r, p in summary.trajectory.items()}
    for brief in (summary.dense, summary.kept):
        record = by_round.setdefault(brief.round, RoundRecord(round=brief.round))
        for name in ("sparsity", "val_acc", "test_acc", "k", "N", "entropy"):
            setattr(record, name, getattr(brief, name))
    return [by_round[r] for r in sorted(by_round)]


def to_frame(rows: list[Row]) -> pd.DataFrame:
    """The rows as a frame with one dtype per column whatever the source (CSV cells, JSON, W&B values)."""
    frame = pd.DataFrame([vars(r) for r in rows], columns=COLUMNS)
    for column in INTEGER_COLUMNS:
        frame[column] = frame[column].astype(int)
    for column in NUMBER_COLUMNS:  # may be missing (NaN): float
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["is_kept"] = frame["is_kept"].astype(bool)
    return frame.sort_values(["model", "dataset", "method", "seed", "round"], kind="stable").reset_index(drop=True)


def _renamed_column(name: str) -> str:
    """A column's name in this version of runs.csv: before records schema 3 the kept round's model was "final"
    (``is_final``) in the rows and "uncollapsed" in the latency columns."""
    if name == "is_final":
        return "is_kept"
    if name.startswith("latency_"):
        return "_".join("kept" if part == "uncollapsed" else part for part in name.split("_"))
    return name


def read_runs(path) -> pd.DataFrame:
    """A runs.csv as this version's columns (one written before the rename has its columns renamed: never a column
    left empty because its name moved), with runs of one method in several settings told apart
    (:func:`qualified_methods`)."""
    frame = pd.read_csv(path)
    return qualified_methods(frame.rename(columns={c: _renamed_column(c) for c in frame.columns}))
