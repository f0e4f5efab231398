"""Writing and reading a run's records: local files are the truth; W&B (optional, imported lazily) mirrors them.

Where each file lives is :class:`~nepenthe.rundir.RunDir`'s, how it is written whole :mod:`nepenthe.atomic`'s, and
every field is defined once, in :mod:`nepenthe.records`; this module only moves records to and from files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, cast

from .atomic import append_line, atomic_write_text
from .errors import NepentheError
from .records import FailureStatus, RecordError, RoundRecord, Summary, flatten
from .rundir import RunDir


def write_failure(run_dir: str | Path, error: str, kind: str, details: str = "", *, written_by: str = "job",
                  job_id: str | None = None) -> None:
    """Record that the run in ``run_dir`` failed: ``status.json`` and, when given, the traceback in ``error.txt``.
    Best effort: a full disk must not hide the original error."""
    import datetime

    status = FailureStatus(error=error, type=kind, written_by=written_by, job_id=job_id,
                           when=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        atomic_write_text(RunDir(run_dir).status, json.dumps(status.to_dict(), indent=2) + "\n")
        if details:
            atomic_write_text(RunDir(run_dir).error, details)
    except NepentheError:
        pass


def read_status(run_dir: str | Path) -> FailureStatus | None:
    """``status.json`` of a failed run, or None (none, or unreadable)."""
    path = RunDir(run_dir).status
    try:
        return FailureStatus.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, RecordError):
        return None


def read_rounds(run_dir: str | Path) -> list[RoundRecord]:
    """The round records of a run. A cut-off last line (a write interrupted by a full disk or a kill) is skipped
    with a warning; a broken line before the end is an error naming the file and the line."""
    path = RunDir(run_dir).rounds
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                warnings.warn(f"{path}: line {number} is cut off (an interrupted write); skipped it. Re-running "
                              f"the run's command rewrites the file from its checkpoints", stacklevel=2)
                continue
            raise NepentheError(f"{path}: line {number} is not valid JSON ({exc.msg}); the file was edited or "
                                f"damaged: re-run the run's command to rewrite it from its checkpoints") from exc
        try:
            records.append(RoundRecord.from_dict(data))
        except RecordError as exc:
            raise NepentheError(f"{path}: line {number}: {exc}") from exc
    return records


def read_summary(run_dir: str | Path) -> Summary | None:
    path = RunDir(run_dir).summary
    if not path.exists():
        return None
    try:
        return Summary.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise NepentheError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); delete it and re-run the "
                            f"run's command to write it again from the checkpoints") from exc
    except RecordError as exc:
        raise NepentheError(f"{path}: {exc}") from exc


class RunRecorder:
    def __init__(self, run_dir: str | Path, *, wandb_settings: dict | None = None, config: dict | None = None):
        self.run_dir = RunDir(run_dir)
        self.wandb_settings = wandb_settings
        self.config = config or {}
        self.warning: str | None = None  # why the W&B mirror runs offline or not at all
        self._wandb_run = None

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.run_dir.config, yaml_text)

    def restore_rounds(self, records: list[RoundRecord]) -> None:
        """After a resume, make rounds.jsonl hold exactly the rounds the checkpoint knows (no dangling line)."""
        atomic_write_text(self.run_dir.rounds, "".join(json.dumps(r.to_dict()) + "\n" for r in records))

    def round(self, record: RoundRecord) -> None:
        data = record.to_dict()
        append_line(self.run_dir.rounds, json.dumps(data) + "\n")
        self._mirror(lambda run: run.log(flatten(data), step=record.round))

    def summary(self, summary: Summary) -> None:
        data = summary.to_dict()
        atomic_write_text(self.run_dir.summary, json.dumps(data, indent=2) + "\n")
        self._mirror(lambda run: (run.summary.update(flatten(data)), run.finish()))
        self._wandb_run = None

    def start(self) -> None:
        """Start the W&B mirror now, before any training, so that trouble shows at once. Online mode that cannot
        start (no API key, no network, ``init_timeout`` seconds passed) warns once and goes on offline; if even
        that fails, the mirror is off. The local records never depend on it."""
        if self.wandb_settings is None or self._wandb_run is not None:
            return
        mode = self.wandb_settings.get("mode", "offline")
        try:
            self._wandb_run = self._init_wandb(mode)
            return
        except Exception as exc:  # wandb raises its own UsageError/CommError types, and more
            first = f"W&B {mode} could not start ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if mode == "online":
            try:
                self._wandb_run = self._init_wandb("offline")
                self.warning = f"{first}; mirroring offline into {self.run_dir.wandb} (sync later with `wandb sync`)"
            except Exception as exc:
                self.warning = f"{first}, nor offline ({type(exc).__name__}); W&B mirror off, local records kept"
        else:
            self.warning = f"{first}; W&B mirror off, local records kept"
        self.wandb_settings = None
        warnings.warn(self.warning, stacklevel=2)

    def _init_wandb(self, mode: str):
        import wandb  # optional dependency, only imported when the logger is on

        s = self.wandb_settings or {}
        return wandb.init(
            project=s.get("project"), entity=s.get("entity"), group=s.get("group"), tags=s.get("tags") or None,
            mode=cast(Any, mode),  # offline | online | disabled: checked by config validation
            dir=str(self.run_dir.path), config=self.config, name=self.run_dir.path.name, id=s.get("id"),
            resume="allow", settings=wandb.Settings(init_timeout=s.get("init_timeout", 10)),
        )

    def _mirror(self, action) -> None:
        """Send to W&B; a failure there warns once and turns the mirror off, never stops the run."""
        self.start()
        if self._wandb_run is None:
            return
        try:
            action(self._wandb_run)
        except Exception as exc:
            self._wandb_run, self.wandb_settings = None, None
            self.warning = f"W&B mirror failed ({type(exc).__name__}: {exc}); turned off, local records kept"
            warnings.warn(self.warning, stacklevel=2)
