"""Run directories: their names (:func:`run_id`, from a job's semantic overrides), and which folders a failed run may
remove: only those this command created, never one that existed before it.

Hydra creates a job's run directory before the job's code starts, so the job cannot tell by itself whether the
folder was there already (``hydra.run.dir=.`` names the checkout). The command's launcher records, before Hydra
creates anything, the deepest existing folder on the way to the run (or sweep) directory and the names inside it
(:meth:`Preexisting.snapshot`, handed to jobs through an environment variable so that jobs in other processes see
it too). A job refused before it wrote a record removes Hydra's own files and then only empty folders the snapshot
proves new: ``rmdir``, never a recursive delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nepenthe.config import is_non_semantic

ENV_VAR = "NEPENTHE_PREEXISTING"  # how the launcher hands the snapshot to jobs in other processes
HYDRA_SUBDIR, HYDRA_FILES = ".hydra", ("config.yaml", "hydra.yaml", "overrides.yaml")
SWEEP_FILE = "multirun.yaml"  # what Hydra writes into a sweep folder before its jobs start
_MAX_ENV_CHARS = 100_000  # under Linux's 128 KiB limit for one environment string


@dataclass(frozen=True)
class Preexisting:
    anchor: str  # the deepest folder on the way to the target that existed when the command started
    names: tuple[str, ...] | None  # what the anchor held then; None: unknown, so nothing below it counts as new

    @classmethod
    def snapshot(cls, target: str | Path) -> Preexisting:
        anchor = Path(target).absolute()
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
        try:
            names = tuple(sorted(os.listdir(anchor))) if anchor.is_dir() else None
        except OSError:
            names = None
        return cls(str(anchor), names)

    def is_new(self, path: str | Path) -> bool:
        """True only when ``path`` provably did not exist when the snapshot was taken."""
        path, anchor = Path(path).absolute(), Path(self.anchor)
        if self.names is None or anchor not in path.parents:
            return False
        return path.relative_to(anchor).parts[0] not in self.names

    def export(self) -> None:
        text = json.dumps({"anchor": self.anchor, "names": self.names})
        if len(text) > _MAX_ENV_CHARS:  # too many names to hand over: jobs then remove nothing
            text = json.dumps({"anchor": self.anchor, "names": None})
        os.environ[ENV_VAR] = text

    @classmethod
    def from_env(cls) -> Preexisting | None:
        text = os.environ.get(ENV_VAR)
        if not text:
            return None
        data = json.loads(text)
        return cls(data["anchor"], None if data["names"] is None else tuple(data["names"]))


def remove_unused_run_dir(run_dir: str | Path, preexisting: Preexisting | None) -> list[Path]:
    """After a job that failed before writing any record: delete Hydra's files in ``run_dir/.hydra`` and each folder
    from there upwards that this command created and that is now empty. Returns what was removed."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / HYDRA_SUBDIR
    if preexisting is None or not preexisting.is_new(hydra_dir):
        return []
    removed = []
    for name in HYDRA_FILES:
        path = hydra_dir / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    folder = hydra_dir
    while preexisting.is_new(folder):
        try:
            folder.rmdir()  # only an empty folder goes: anything else in it stays
        except OSError:
            break
        removed.append(folder)
        folder = folder.parent
    return removed


def remove_unused_sweep_dir(sweep_dir: str | Path, preexisting: Preexisting | None) -> list[Path]:
    """After a sweep refused before any job started: its folder holds only Hydra's ``multirun.yaml``. Delete that
    file and each folder upwards that this command created and that is now empty."""
    sweep_dir = Path(sweep_dir)
    if preexisting is None or not preexisting.is_new(sweep_dir) or not sweep_dir.is_dir():
        return []
    if sorted(p.name for p in sweep_dir.iterdir()) != [SWEEP_FILE]:
        return []
    (sweep_dir / SWEEP_FILE).unlink()
    removed, folder = [sweep_dir / SWEEP_FILE], sweep_dir
    while preexisting.is_new(folder):
        try:
            folder.rmdir()
        except OSError:
            break
        removed.append(folder)
        folder = folder.parent
    return removed


def run_id(task_overrides) -> str:
    """Directory name for a job's overrides (``hydra:overrides.task``): the semantic ones (config.NON_SEMANTIC_KEYS
    are left out, so changing how a run is watched never renames it), sorted and joined as Hydra's override_dirname
    joins them; readable, filesystem-safe, bounded in length."""
    semantic = sorted(line for line in task_overrides if not is_non_semantic(line.split("=", 1)[0]))
    overrides = ",".join(semantic)
    if not overrides:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9=,._+-]", "_", overrides)
    if len(safe) <= 200:  # well under the usual 255-byte file-name limit
        return safe
    return safe[:180] + "-" + hashlib.sha256(overrides.encode()).hexdigest()[:12]


def job_run_dir(sweep_dir: str | Path, job_overrides) -> Path:
    """Where a sweep job writes (``hydra.sweep.dir`` / ``hydra.sweep.subdir`` of conf/config.yaml): what the
    submitting side needs to record a job that never reported back."""
    return Path(sweep_dir) / run_id(list(job_overrides))
