"""Gather runs into one long-form CSV: one row per run × round, the same columns whatever the source.

    python -m analysis.collect runs/table1_smoke -o results/runs.csv                # local run directories
    python -m analysis.collect --wandb-csv wandb_export.csv -o results/runs.csv    # a W&B runs-table CSV export
    python -m analysis.collect --wandb ENTITY/PROJECT --filters '{"config.seed": 0}' -o results/runs.csv

Sources: (a) run directories written by train.py (found recursively under the given folders; a ``wandb/`` folder
inside a run directory stands for that run directory); (b) the CSV that the W&B web UI exports from a project's runs
table (config columns dotted, ``model.name``; summary columns as nepenthe logs them, ``final/test_acc``); (c) the W&B
API (``wandb.Api().runs``). W&B holds the same records flattened with ``/`` (see nepenthe/tracking.py); a runs-table
export holds summaries only, whose ``trajectory`` gives every round (entropy only for the dense and kept rounds).
Runs without a summary (failed, unfinished, still running) are listed with a warning and keep the rows they have.

Columns (stable; tables.py and plots.py read these):
  run_id, model, dataset, method, ratio, seed, precision   identity of the run (config)
  round, is_final, kept_round                        the round; whether it is the kept (collapsed) one; which is
  sparsity, val_acc, test_acc, k, N, depth           k/N zero-entropy units; depth = "k/N"
  entropy                                            JSON object {unit: bits} for that round (empty when unknown)
  weight_layers_dense, weight_layers_collapsed       weight layers on the longest path      (final rows only)
  macs_dense, macs_nonzero, macs_collapsed           MACs per input                         (final rows only)
  params_dense, params_collapsed                                                            (final rows only)
  latency_device, latency_threads, latency_precision, latency_batch   where and how latency was timed; batch 1 and
  latency_ms_{b1,bn}_{uncollapsed,bn_folded,collapsed}                the largest batch measured: median ms, and
  latency_iqr_ms_{b1,bn}_{uncollapsed,bn_folded,collapsed}            p75 - p25 of the timed blocks (final rows)
  collapsed_test_acc, collapse_max_abs_diff          in the run's precision                 (final rows only)
  collapse_relative_diff                             collapsed vs uncollapsed, in the run's precision, / max |output|
  test_acc_fp32, collapsed_test_acc_fp32             the kept model uncollapsed and collapsed in float32 (equal to
                                                     test_acc / collapsed_test_acc for fp32 runs)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from nepenthe.tracking import CONFIG_FILE, ROUNDS_FILE, STATUS_FILE, read_rounds, read_status, read_summary

TIMED = ("uncollapsed", "bn_folded", "collapsed")
LATENCY_COLUMNS = [f"latency_{stat}_{size}_{model}" for size in ("b1", "bn") for stat in ("ms", "iqr_ms")
                   for model in TIMED]
COLUMNS = [
    "run_id", "model", "dataset", "method", "ratio", "seed", "precision", "round", "is_final", "kept_round",
    "sparsity", "val_acc", "test_acc", "k", "N", "depth", "entropy", "weight_layers_dense", "weight_layers_collapsed",
    "macs_dense", "macs_nonzero", "macs_collapsed", "params_dense", "params_collapsed", "latency_device",
    "latency_threads", "latency_precision", "latency_batch", *LATENCY_COLUMNS, "collapsed_test_acc",
    "collapse_max_abs_diff", "collapse_relative_diff", "test_acc_fp32", "collapsed_test_acc_fp32",
]
ROUND_KEYS = ("sparsity", "val_acc", "test_acc", "k", "N")  # what every source has for every round
NAN = math.nan


def unflatten(flat: dict, sep: str = "/") -> dict:
    """``{"entropy/relu": 0.5}`` → ``{"entropy": {"relu": 0.5}}`` (the inverse of tracking.flatten)."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # a scalar and a group under one name: keep the scalar, skip the rest
                break
        else:
            node[leaf] = value
    return nested


def _latency_fields(collapse: dict) -> dict:
    latency = collapse.get("latency_ms") or {}
    if not latency:
        return {}
    spread = collapse.get("latency_iqr_ms") or {}
    batches = sorted(int(k.removeprefix("batch_")) for k in latency["collapsed"])
    fields = {"latency_batch": batches[-1], "latency_device": collapse.get("latency_device", NAN),
              "latency_threads": collapse.get("latency_threads", NAN),
              "latency_precision": collapse.get("latency_precision", "fp32")}
    for size, batch in (("b1", batches[0]), ("bn", batches[-1])):
        for model in TIMED:
            fields[f"latency_ms_{size}_{model}"] = (latency.get(model) or {}).get(f"batch_{batch}", NAN)
            fields[f"latency_iqr_ms_{size}_{model}"] = (spread.get(model) or {}).get(f"batch_{batch}", NAN)
    return fields


def _final_fields(summary: dict | None, kept_test_acc: float, precision: str) -> dict:
    if not summary or "cost" not in summary:
        return {}
    cost, collapse = summary["cost"], summary.get("collapse") or {}
    fields = {
        "weight_layers_dense": cost["dense"]["weight_layers_on_longest_path"], "macs_dense": cost["dense"]["macs"],
        "macs_nonzero": cost["final"]["macs_nonzero"], "params_dense": cost["dense"]["params"],
        # a reduced-precision run's fp32 accuracy is known only where collapse measured it (below)
        "test_acc_fp32": kept_test_acc if precision == "fp32" else NAN,
    }
    if "collapsed" in cost:
        fields.update(weight_layers_collapsed=cost["collapsed"]["weight_layers_on_longest_path"],
                      macs_collapsed=cost["collapsed"]["macs"], params_collapsed=cost["collapsed"]["params"])
    fields.update(_latency_fields(collapse))
    if collapse:
        reduced = "relative_diff_run_precision" in collapse  # fp32 runs: the run's precision is fp32
        fields.update(
            collapsed_test_acc=collapse["test_acc"], collapse_max_abs_diff=collapse["max_abs_diff"],
            collapse_relative_diff=collapse["relative_diff_run_precision"] if reduced
            else collapse.get("relative_diff_vs_original", NAN),
            collapsed_test_acc_fp32=collapse["test_acc_fp32"] if reduced else collapse["test_acc"],
            test_acc_fp32=collapse["uncollapsed_test_acc_fp32"] if reduced else kept_test_acc)
    return fields


def run_rows(run_id: str, config: dict, records: list[dict], summary: dict | None) -> list[dict]:
    """The rows of one run from its config, round records and summary (nested dicts, any source). A summary whose
    status is not "complete" is ignored: its run has no kept round yet."""
    summary = summary if summary and summary.get("status") == "complete" else None
    final_round = summary.get("final_round") if summary else None
    kept = next((r for r in records if r["round"] == final_round), None)
    precision = (config.get("hardware") or {}).get("precision", "fp32")
    final = _final_fields(summary, kept["test_acc"] if kept else NAN, precision)
    rows = []
    for r in sorted(records, key=lambda r: r["round"]):
        row = dict.fromkeys(COLUMNS, NAN)
        entropy = r.get("entropy")
        row.update(
            run_id=run_id, model=config["model"]["name"], dataset=config["dataset"]["name"],
            method=config["pruning"]["method"], ratio=config["pruning"]["ratio"], seed=config["seed"],
            precision=precision,
            round=int(r["round"]), is_final=r["round"] == final_round,
            kept_round=final_round if final_round is not None else NAN,
            sparsity=r["sparsity"], val_acc=r["val_acc"], test_acc=r["test_acc"], k=int(r["k"]), N=int(r["N"]),
            depth=f"{int(r['k'])}/{int(r['N'])}", entropy=json.dumps(entropy) if entropy else "",  # network order
        )
        if row["is_final"]:
            row.update(final)
        rows.append(row)
    return rows


def records_from_summary(summary: dict) -> list[dict]:
    """Round records rebuilt from a summary alone (a W&B runs-table export): every round from ``trajectory``, the
    dense and kept rounds with their entropy; without ``trajectory`` (older runs) only those two rounds."""
    if summary.get("status") != "complete":
        last = {key: summary.get(key) for key in ("round", *ROUND_KEYS, "entropy")}  # W&B's last logged round
        return [last] if last["round"] is not None and last["test_acc"] is not None else []
    by_round = {int(r): {"round": int(r), **{k: v[k] for k in ROUND_KEYS}}
                for r, v in (summary.get("trajectory") or {}).items()}
    for part in ("dense", "final"):
        subset = summary[part]
        record = by_round.setdefault(int(subset["round"]), {"round": int(subset["round"])})
        record.update({k: subset[k] for k in ROUND_KEYS}, entropy=subset.get("entropy"))
    return [by_round[r] for r in sorted(by_round)]


def local_runs(folders: list[str | Path]) -> list[dict]:
    """Rows of every run directory (a folder holding config.yaml and rounds.jsonl) under ``folders``."""
    rows = []
    for folder in folders:
        for config_file in sorted(Path(folder).rglob("config.yaml")):
            run_dir = config_file.parent
            rounds_file = run_dir / "rounds.jsonl"
            if not rounds_file.is_file():
                continue
            config = yaml.safe_load(config_file.read_text())
            records = read_rounds(run_dir)  # a cut-off last line is skipped with a warning naming the file
            summary = read_summary(run_dir)
            rows += run_rows(str(run_dir), config, records, summary)
    return rows


def incomplete_runs(folders: list[str | Path]) -> list[tuple[Path, str]]:
    """Run directories under ``folders`` that have no summary: ``(dir, "failed: <error>")`` for a sweep job that
    recorded its failure (status.json), ``(dir, "unfinished: rounds 0..R")`` for one that stopped or is running.
    Their rows (if any) are in the table without final values; this says why."""
    found = []
    for folder in folders:
        candidates = {p.parent for p in Path(folder).rglob(STATUS_FILE)}
        candidates |= {p.parent for p in Path(folder).rglob("rounds.jsonl")}
        for run_dir in sorted(candidates):
            status = read_status(run_dir)
            if status is not None and status.get("status") == "failed":
                found.append((run_dir, f"failed: {status.get('error')}"))
            elif read_summary(run_dir) is None and (run_dir / "rounds.jsonl").is_file():
                rounds = [r["round"] for r in read_rounds(run_dir)]
                found.append((run_dir, f"unfinished: rounds {min(rounds)}..{max(rounds)}" if rounds
                              else "unfinished: no round yet"))
    return found


INTEGER_COLUMNS = ("seed", "round", "k", "N")  # always present
NUMBER_COLUMNS = [c for c in COLUMNS if c.startswith(("weight_layers_", "macs_", "params_", "latency_ms_",
                                                        "latency_iqr_ms_", "collapse"))
                  or c in ("kept_round", "latency_threads", "latency_batch", "collapsed_test_acc", "test_acc_fp32",
                           "collapsed_test_acc_fp32", "sparsity", "val_acc", "test_acc", "ratio")]


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a frame with one dtype per column whatever the source (CSV cells, JSON, W&B values)."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in INTEGER_COLUMNS:
        frame[column] = frame[column].astype(int)
    for column in NUMBER_COLUMNS:  # may be missing (NaN): float
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["is_final"] = frame["is_final"].astype(bool)
    return frame.sort_values(["model", "dataset", "method", "seed", "round"], kind="stable").reset_index(drop=True)


def warn_incomplete(problems) -> None:
    """One warning per run without a summary: never dropped silently."""
    for where, why in problems:
        print(f"warning: {where} has no summary ({why})", file=sys.stderr)


def run_folder(folder: str | Path) -> Path:
    """The folder to search for run directories. A ``wandb/`` folder (or one of its runs) inside a run directory
    stands for that run directory, whose records are the same data; a W&B folder elsewhere is refused with what to
    do instead (wandb writes its offline records in a binary format only wandb itself reads)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a folder; give folders holding run directories")
    if any(True for _ in folder.rglob(ROUNDS_FILE)):
        return folder
    for parent in folder.resolve().parents:
        if (parent / CONFIG_FILE).is_file() and (parent / ROUNDS_FILE).is_file():
            print(f"note: {folder} is inside the run directory {parent}; reading that", file=sys.stderr)
            return parent
    if any(folder.glob("*run-*")) or folder.name.startswith(("offline-run-", "run-")):
        raise SystemExit(f"error: {folder} holds W&B runs but no nepenthe run directory; give the run directories "
                         "(train.py writes wandb/ inside each), or `wandb sync` them and use --wandb ENTITY/PROJECT, "
                         "or export the project's runs table as CSV and use --wandb-csv FILE")
    return folder


def main(argv=None) -> None:
    from . import wandb_source  # here, not at the top: wandb_source builds its rows with this module

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", help="folders holding run directories")
    parser.add_argument("--wandb", default=None, help="ENTITY/PROJECT to read through the W&B API")
    parser.add_argument("--filters", default=None, help="W&B API filters as JSON (MongoDB style)")
    parser.add_argument("--wandb-csv", nargs="*", default=[], help="CSV files exported from a W&B runs table")
    parser.add_argument("-o", "--output", default="results/runs.csv")
    args = parser.parse_args(argv)
    folders = [run_folder(f) for f in args.folders]
    rows = local_runs(folders)
    problems = [(str(run_dir), why) for run_dir, why in incomplete_runs(folders)]
    for csv in args.wandb_csv:
        more, issues = wandb_source.csv_runs(csv)
        rows, problems = rows + more, problems + issues
    if args.wandb:
        more, issues = wandb_source.api_runs(args.wandb, json.loads(args.filters) if args.filters else None)
        rows, problems = rows + more, problems + issues
    warn_incomplete(problems)
    if not rows:
        raise SystemExit("error: no runs found (give folders holding run directories, --wandb-csv FILE, or --wandb "
                         "ENTITY/PROJECT)")
    frame = to_frame(rows)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output, index=False)
    print(f"{len(frame)} rows from {frame['run_id'].nunique()} runs -> {args.output}")


if __name__ == "__main__":
    main()
