"""Gather runs into one long-form CSV: one row per run × round, the same columns whatever the source.

    python -m analysis.collect runs/table1_smoke -o results/runs.csv                # local run directories
    python -m analysis.collect --wandb ENTITY/PROJECT --filters '{"config.seed": 0}' -o results/runs.csv

Sources: (a) run directories written by train.py (found recursively under the given folders); (b) the W&B API
(``wandb.Api().runs``), whose history and summary are the same records flattened with ``/`` (see
nepenthe/tracking.py). W&B *offline* runs: wandb offers no reader for its ``.wandb`` files; nepenthe writes them
inside the run directory, whose local records hold the same data, so (a) covers them.

Columns (stable; tables.py and plots.py read these):
  run_id, model, dataset, method, ratio, seed        identity of the run (config)
  round, is_final                                    the round, and whether it is the kept (collapsed) one
  sparsity, val_acc, test_acc, k, N, depth           k/N zero-entropy units; depth = "k/N"
  entropy                                            JSON object {unit: bits} for that round
  weight_layers_dense, weight_layers_collapsed       weight layers on the longest path      (final rows only)
  macs_dense, macs_nonzero, macs_collapsed           MACs per input                         (final rows only)
  params_dense, params_collapsed                                                            (final rows only)
  latency_batch, latency_ms_b1_uncollapsed, latency_ms_b1_collapsed,
  latency_ms_bn_uncollapsed, latency_ms_bn_collapsed  batch 1 and the largest batch measured (final rows only)
  collapsed_test_acc, collapse_max_abs_diff                                                 (final rows only)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from nepenthe.tracking import STATUS_FILE, read_rounds, read_status, read_summary

COLUMNS = [
    "run_id", "model", "dataset", "method", "ratio", "seed", "round", "is_final", "sparsity", "val_acc", "test_acc",
    "k", "N", "depth", "entropy", "weight_layers_dense", "weight_layers_collapsed", "macs_dense", "macs_nonzero",
    "macs_collapsed", "params_dense", "params_collapsed", "latency_batch", "latency_ms_b1_uncollapsed",
    "latency_ms_b1_collapsed", "latency_ms_bn_uncollapsed", "latency_ms_bn_collapsed", "collapsed_test_acc",
    "collapse_max_abs_diff",
]
NAN = math.nan


def unflatten(flat: dict) -> dict:
    """``{"entropy/relu": 0.5}`` → ``{"entropy": {"relu": 0.5}}`` (the inverse of tracking.flatten)."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _final_fields(summary: dict | None) -> dict:
    if not summary or "cost" not in summary:
        return {}
    cost, collapse = summary["cost"], summary.get("collapse") or {}
    fields = {
        "weight_layers_dense": cost["dense"]["weight_layers_on_longest_path"], "macs_dense": cost["dense"]["macs"],
        "macs_nonzero": cost["final"]["macs_nonzero"], "params_dense": cost["dense"]["params"],
    }
    if "collapsed" in cost:
        fields.update(weight_layers_collapsed=cost["collapsed"]["weight_layers_on_longest_path"],
                      macs_collapsed=cost["collapsed"]["macs"], params_collapsed=cost["collapsed"]["params"])
    latency = collapse.get("latency_ms") or {}
    if latency:
        batches = sorted(int(k.removeprefix("batch_")) for k in latency["collapsed"])
        small, large = f"batch_{batches[0]}", f"batch_{batches[-1]}"
        fields.update(latency_batch=batches[-1],
                      latency_ms_b1_uncollapsed=latency["uncollapsed"][small],
                      latency_ms_b1_collapsed=latency["collapsed"][small],
                      latency_ms_bn_uncollapsed=latency["uncollapsed"][large],
                      latency_ms_bn_collapsed=latency["collapsed"][large])
    if collapse:
        fields.update(collapsed_test_acc=collapse["test_acc"], collapse_max_abs_diff=collapse["max_abs_diff"])
    return fields


def run_rows(run_id: str, config: dict, records: list[dict], summary: dict | None) -> list[dict]:
    """The rows of one run from its config, round records and summary (nested dicts, any source)."""
    final_round = summary.get("final_round") if summary else None
    final = _final_fields(summary)
    rows = []
    for r in sorted(records, key=lambda r: r["round"]):
        row = dict.fromkeys(COLUMNS, NAN)
        row.update(
            run_id=run_id, model=config["model"]["name"], dataset=config["dataset"]["name"],
            method=config["pruning"]["method"], ratio=config["pruning"]["ratio"], seed=config["seed"],
            round=r["round"], is_final=r["round"] == final_round, sparsity=r["sparsity"], val_acc=r["val_acc"],
            test_acc=r["test_acc"], k=r["k"], N=r["N"], depth=f"{r['k']}/{r['N']}",
            entropy=json.dumps(r["entropy"], sort_keys=True),
        )
        if row["is_final"]:
            row.update(final)
        rows.append(row)
    return rows


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


def wandb_runs(path: str, filters: dict | None = None, api=None) -> list[dict]:
    """Rows of the W&B runs of ``entity/project`` (``api`` defaults to ``wandb.Api()``)."""
    if api is None:
        import wandb  # optional: only this source needs it

        api = wandb.Api()
    rows = []
    for run in api.runs(path, filters=filters or {}):
        records = [unflatten({k: v for k, v in h.items() if not k.startswith("_")}) for h in run.scan_history()]
        records = [r for r in records if "round" in r]
        summary = unflatten({k: v for k, v in dict(run.summary).items() if not k.startswith("_")})
        rows += run_rows(f"wandb:{path}/{run.id}", dict(run.config), records,
                         summary if summary.get("status") == "complete" else None)
    return rows


def to_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["model", "dataset", "method", "seed", "round"], kind="stable").reset_index(drop=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", help="folders holding run directories")
    parser.add_argument("--wandb", default=None, help="ENTITY/PROJECT to read through the W&B API")
    parser.add_argument("--filters", default=None, help="W&B API filters as JSON (MongoDB style)")
    parser.add_argument("-o", "--output", default="results/runs.csv")
    args = parser.parse_args(argv)
    rows = local_runs(args.folders)
    for run_dir, why in incomplete_runs(args.folders):  # never dropped silently
        print(f"warning: {run_dir} has no summary ({why})", file=sys.stderr)
    if args.wandb:
        rows += wandb_runs(args.wandb, json.loads(args.filters) if args.filters else None)
    if not rows:
        raise SystemExit("error: no runs found (give folders holding run directories, or --wandb ENTITY/PROJECT)")
    frame = to_frame(rows)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output, index=False)
    print(f"{len(frame)} rows from {frame['run_id'].nunique()} runs -> {args.output}")


if __name__ == "__main__":
    main()
