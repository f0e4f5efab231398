"""Every path a run directory holds, named in one place (:class:`RunDir`), and the one way to clear an older run.

A run directory holds:
  ``config.yaml``      the resolved config, written first (its presence means the run began writing records)
  ``rounds.jsonl``     one :class:`~nepenthe.records.RoundRecord` per completed round, each appended whole
  ``summary.json``     the :class:`~nepenthe.records.Summary`, written last: its presence means the run finished
  ``checkpoints/``     ``round_NNN.pt`` per completed round and ``in_round.pt`` for the round in progress
                       (:mod:`nepenthe.store`)
  shipped networks     ``collapsed``, ``collapsed_approximate``, ``collapsed_finetuned``, each as ``.pt2``
                       (torch.export) and ``.onnx`` (:mod:`nepenthe.deploy`)
  ``collapse.json``    the report of ``python -m nepenthe_cli.collapse`` re-collapsing a saved run
  ``status.json``, ``error.txt``   a failed sweep job: what, when, and the traceback (the next attempt removes them)
  ``wandb/``           the optional W&B mirror
  ``.lock``, ``.lock.holder``      one writer at a time (:mod:`nepenthe.runlock`); never cleared
  ``.<file>.<random>`` a temporary file on the way to ``<file>`` (:mod:`nepenthe.atomic`); a killed write leaves one
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import temp_prefix

CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE = "config.yaml", "rounds.jsonl", "summary.json"
COLLAPSE_REPORT_FILE, STATUS_FILE, ERROR_FILE = "collapse.json", "status.json", "error.txt"
CHECKPOINT_DIR, IN_ROUND_FILE, WANDB_DIR = "checkpoints", "in_round.pt", "wandb"
LOCK_FILE, HOLDER_FILE = ".lock", ".lock.holder"
# The networks a run ships, by their role in the records (CollapseResult, its approximate and finetuned parts)
NETWORKS = {"collapsed": "collapsed", "approximate": "collapsed_approximate", "finetuned": "collapsed_finetuned"}
NETWORK_FORMATS = (".pt2", ".onnx")


@dataclass(frozen=True)
class RunDir:
    """``RunDir("runs/x")``: the paths of one run directory; nothing is created until something is written."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def rounds(self) -> Path:
        return self.path / ROUNDS_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def collapse_report(self) -> Path:
        return self.path / COLLAPSE_REPORT_FILE

    @property
    def status(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def error(self) -> Path:
        return self.path / ERROR_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def in_round(self) -> Path:
        return self.checkpoints / IN_ROUND_FILE

    @property
    def wandb(self) -> Path:
        return self.path / WANDB_DIR

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def lock_holder(self) -> Path:
        return self.path / HOLDER_FILE

    def checkpoint(self, round_index: int) -> Path:
        return self.checkpoints / f"round_{round_index:03d}.pt"

    def network(self, role: str, suffix: str = ".pt2") -> Path:
        """``network("approximate", ".onnx")`` → ``collapsed_approximate.onnx``."""
        if role not in NETWORKS or suffix not in NETWORK_FORMATS:
            raise ValueError(f"no shipped network {role!r}{suffix}; roles: {', '.join(NETWORKS)}, formats: "
                             f"{', '.join(NETWORK_FORMATS)}")
        return self.path / f"{NETWORKS[role]}{suffix}"

    def networks(self) -> list[Path]:
        """Every shipped-network file name a run may write (present or not)."""
        return [self.network(role, suffix) for role in NETWORKS for suffix in NETWORK_FORMATS]

    def outputs(self) -> list[Path]:
        """Everything a run writes besides config.yaml and the lock: what ``resume=false`` removes."""
        files = [self.rounds, self.summary, self.collapse_report, self.status, self.error, *self.networks()]
        return files + [self.checkpoints, self.wandb]

    def temp_files(self) -> list[Path]:
        """Temporary files a killed write left (``.rounds.jsonl.k3j9``, ``checkpoints/.round_002.pt.x1``)."""
        files = [self.config, *(p for p in self.outputs() if p.parent == self.path and p.suffix)]
        prefixes = {self.path: tuple(temp_prefix(p.name) for p in files),
                    self.checkpoints: (temp_prefix(IN_ROUND_FILE), temp_prefix("round_")[:-1])}
        return sorted(p for folder, starts in prefixes.items() if folder.is_dir()
                      for p in folder.iterdir() if p.is_file() and p.name.startswith(starts))

    def remove_temp_files(self) -> list[Path]:
        stale = self.temp_files()
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def clear_networks(self) -> None:
        """Before a collapse ships networks: none of an older collapse may stay beside the new ones."""
        for p in self.networks():
            p.unlink(missing_ok=True)

    def clear(self) -> None:
        """``resume=false``: every output of an older run goes, temporary files included (config.yaml is rewritten
        next; the lock belongs to the process holding it)."""
        self.remove_temp_files()
        for p in self.outputs():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def clear_failure(self) -> None:
        for p in (self.status, self.error):
            p.unlink(missing_ok=True)
