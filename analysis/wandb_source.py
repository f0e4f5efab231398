"""W&B as a source of rows for analysis.collect: the CSV that the W&B web UI exports from a runs table, and the
W&B API. Both give the same rows as the run directories the runs were mirrored from (analysis.rows.Row).

A runs-table export has one row per run: W&B's own columns (Name, State, Notes, User, Tags, Created, Runtime,
Sweep, ...), the config flattened with dots (``pruning.method``), and the summary as nepenthe logged it, flattened
with slashes (``kept/test_acc``, ``trajectory/3/k``, ``collapse/latency_ms/collapsed/batch_1``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from nepenthe.records import RecordError, RoundRecord, Summary, unflatten

from .rows import records_from_summary, run_rows

WANDB_COLUMNS = ("Name", "ID", "State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep", "Group", "Job Type",
                 "Hostname", "Commit", "GPU Type", "GPU Count")
REQUIRED = ("model.name", "dataset.name", "pruning.method", "pruning.ratio", "seed")


def _value(raw):
    """A CSV cell as the value W&B held: NaN/empty is None, JSON text ("[1, 2]", "true") is decoded."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw.item() if hasattr(raw, "item") else raw


def _problem(state, summary: dict) -> str | None:
    if summary.get("status") == "complete":
        return None
    last = summary.get("round")
    return f"W&B state {state or 'unknown'}" + (f", last logged round {last}" if last is not None else ", no round")


def _rows(run_id: str, config: dict, summary: dict, records=None) -> list:
    """A W&B run's rows: its summary holds nepenthe's summary when the run completed, else its last logged round."""
    if summary.get("status") == "complete":
        try:
            typed = Summary.from_dict(summary, strict=False)  # W&B's summary also holds the last round's keys
        except RecordError as exc:
            raise SystemExit(f"error: W&B run {run_id}: {exc}") from exc
    else:
        typed = Summary(status=summary.get("status") or "running")
    if records is None:
        records = records_from_summary(typed, last_logged=summary)
    return run_rows(run_id, config, records, typed)


def csv_runs(path: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows of every run in a W&B runs-table CSV export, and ``(run, why)`` for runs without a complete summary."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: --wandb-csv {path}: no such file")
    table = pd.read_csv(path, dtype=object, keep_default_na=True)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise SystemExit(f"error: {path} lacks the config columns {', '.join(missing)}; export the runs table with "
                         "its config columns shown (a nepenthe project logs model.name, dataset.name, pruning.*, seed)")
    rows, problems = [], []
    for index, raw in table.iterrows():
        cells = {c: _value(v) for c, v in raw.items()}
        # an empty cell: this run lacks the key (a project's export has every run's columns, e.g. other models' units)
        ours = {c: v for c, v in cells.items() if c not in WANDB_COLUMNS and v is not None}
        # summary keys hold "/" (unit names may hold dots); config keys are dotted; plain names may be either
        config = unflatten({c: v for c, v in ours.items() if "/" not in c}, sep=".")
        summary = unflatten({c: v for c, v in ours.items() if "/" in c or "." not in c})
        # W&B names need not be unique (nepenthe names a run after its directory, "0", "1", ... in a sweep)
        run_id = f"wandb-csv:{path.name}#{index}/{cells.get('ID') or cells.get('Name') or ''}"
        why = _problem(cells.get("State"), summary)
        if why:
            problems.append((run_id, why))
        rows += _rows(run_id, config, summary)
    return rows, problems


def api_runs(path: str, filters: dict | None = None, api=None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows of the W&B runs of ``entity/project`` (``api`` defaults to ``wandb.Api()``), and ``(run, why)`` for runs
    without a complete summary (their logged rounds are kept)."""
    if api is None:
        import wandb  # optional: only this source needs it

        api = wandb.Api()
    rows, problems = [], []
    for run in api.runs(path, filters=filters or {}):
        history = [unflatten({k: v for k, v in h.items() if not k.startswith("_")}) for h in run.scan_history()]
        records = [RoundRecord.from_dict(h, schema=2, strict=False)
                   for h in history if "round" in h]
        summary = unflatten({k: v for k, v in dict(run.summary).items() if not k.startswith("_")})
        run_id = f"wandb:{path}/{run.id}"
        why = _problem(getattr(run, "state", None), summary)
        if why:
            problems.append((run_id, why))
        rows += _rows(run_id, dict(run.config), summary, records)
    return rows, problems
