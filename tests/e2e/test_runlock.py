"""One writer per run directory: the same command started twice refuses at once and names the holder; a holder
killed with SIGKILL leaves no lock that blocks its resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from nepenthe.runlock import RunDirBusy, RunLock
from nepenthe.tracking import read_rounds, read_summary

from conftest import FAST, ROOT, SYNTHETIC

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(
        tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), *SYNTHETIC, *FAST, "train.epochs=40", "hydra.run.dir=" +
               str(tmp_path / "run")]
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout.readline().startswith("compact_cnn: ")  # the banner: the lock is held from here on
        started = time.monotonic()
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: {tmp_path / 'run'} is being written by another process (pid {first.pid} on ")
        assert time.monotonic() - started < 60  # refused at once, not after waiting for the first one
        assert first.poll() is None  # the holder is untouched and still training
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL and (tmp_path / "run" / ".lock").exists()  # the file stays, unlocked
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_summary(tmp_path / "run").status == "complete"
    # in one process: the holder is named, and the lock is free again once released
    with RunLock(tmp_path / "run") as lock:
        assert lock.holder().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(RunDirBusy, match=rf"\(pid {os.getpid()} on .* since .*\); wait for it to finish"):
            RunLock(tmp_path / "run").__enter__()
    assert not (tmp_path / "run" / ".lock.holder").exists()
