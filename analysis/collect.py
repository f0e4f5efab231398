"""Gather runs into one long-form CSV: one row per run × round, the same columns whatever the source.

    python -m analysis.collect runs/table1_smoke -o results/runs.csv                # local run directories
    python -m analysis.collect --wandb-csv wandb_export.csv -o results/runs.csv    # a W&B runs-table CSV export
    python -m analysis.collect --wandb ENTITY/PROJECT --filters '{"config.seed": 0}' -o results/runs.csv

Sources: (a) run directories written by train.py (found recursively under the given folders; a ``wandb/`` folder
inside a run directory stands for that run directory); (b) the CSV that the W&B web UI exports from a project's runs
table (config columns dotted, ``model.name``; summary columns as nepenthe logs them, ``kept/test_acc``); (c) the W&B
API (``wandb.Api().runs``). W&B holds the same records flattened with ``/`` (see nepenthe/tracking.py); a runs-table
export holds summaries only, whose ``trajectory`` gives every round (entropy only for the dense and kept rounds).
Runs without a summary (failed, unfinished, still running) are listed with a warning and keep the rows they have.

Columns: the fields of :class:`analysis.rows.Row`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from nepenthe.rundir import CONFIG_FILE, ROUNDS_FILE, STATUS_FILE, RunDir
from nepenthe.tracking import read_rounds, read_status, read_summary

from . import wandb_source
from .rows import Row, run_rows, to_frame


def local_runs(folders: list[str | Path]) -> list[Row]:
    """Rows of every run directory (a folder holding config.yaml and rounds.jsonl) under ``folders``."""
    rows = []
    for folder in folders:
        for config_file in sorted(Path(folder).rglob(CONFIG_FILE)):
            run_dir = config_file.parent
            if not RunDir(run_dir).rounds.is_file():
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
        candidates |= {p.parent for p in Path(folder).rglob(ROUNDS_FILE)}
        for run_dir in sorted(candidates):
            status = read_status(run_dir)
            if status is not None and status.status == "failed":
                found.append((run_dir, f"failed: {status.error}"))
            elif read_summary(run_dir) is None and RunDir(run_dir).rounds.is_file():
                rounds = [r.round for r in read_rounds(run_dir)]
                found.append((run_dir, f"unfinished: rounds {min(rounds)}..{max(rounds)}" if rounds
                              else "unfinished: no round yet"))
    return found


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
        if RunDir(parent).config.is_file() and RunDir(parent).rounds.is_file():
            print(f"note: {folder} is inside the run directory {parent}; reading that", file=sys.stderr)
            return parent
    if any(folder.glob("*run-*")) or folder.name.startswith(("offline-run-", "run-")):
        raise SystemExit(f"error: {folder} holds W&B runs but no nepenthe run directory; give the run directories "
                         "(train.py writes wandb/ inside each), or `wandb sync` them and use --wandb ENTITY/PROJECT, "
                         "or export the project's runs table as CSV and use --wandb-csv FILE")
    return folder


def main(argv=None) -> None:
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
