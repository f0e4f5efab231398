"""One writer per run directory: two processes on one directory (the same command started twice, two sweeps with
overlapping overrides) would interleave their records and checkpoints.

The lock is an OS file lock (``filelock``: ``flock`` on Linux) on ``RUN_DIR/.lock``, held for the whole run. The
kernel drops it when the holder dies, even by SIGKILL, so a killed run never blocks its own resume. Who holds it
(PID, host, since when) is written next to it, for the refusal message.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import NepentheError
from .rundir import RunDir


class RunDirBusy(NepentheError):
    """Another process is writing this run directory."""


class RunLock:
    """``with RunLock(run_dir):`` — refuses at once, naming the holder, when another live process holds it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = RunDir(run_dir)
        self._lock: FileLock | None = None

    def __enter__(self) -> RunLock:
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.run_dir.lock)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunDirBusy(
                f"{self.run_dir.path} is being written by another process ({self.holder() or 'holder unknown'}); wait "
                f"for it to finish or stop it, then run the command again (it resumes)") from None
        self._lock = lock
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.run_dir.lock_holder.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
        return self

    def holder(self) -> str | None:
        try:
            return self.run_dir.lock_holder.read_text().strip() or None
        except OSError:
            return None

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self.run_dir.lock_holder.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None
            if not self.run_dir.config.exists():  # refused before writing: leave no trace of ours
                self.run_dir.lock.unlink(missing_ok=True)
