"""A disk that fills up during a run: one line naming the file and errno 28, the last good checkpoint stays readable,
and once space is freed the same command resumes and completes. On a real (small) tmpfs; skipped where mounting
is not allowed."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nepenthe.store import latest_checkpoint, load_checkpoint
from nepenthe.tracking import read_rounds, read_summary

from conftest import ROOT
from test_preemption import OVERRIDES, run_dir_of

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        except OSError:
            pass
        try:
            os.fsync(f.fileno())
        except OSError:
            pass


def test_a_full_disk_stops_the_run_with_one_line_and_the_run_resumes_after_space_is_freed(small_disk, tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), *OVERRIDES, f"output_root={small_disk}"]
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:  # wait for round 0's checkpoint, then fill the disk
        run_dir = run_dir_of(small_disk)
        if run_dir is not None and (run_dir / "checkpoints" / "round_000.pt").is_file():
            fill(small_disk / "filler")
            break
        time.sleep(0.05)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "[Errno 28] No space left on device" in lines[0], err[-2000:]
    assert lines[0].startswith("error: could not ") and str(small_disk) in lines[0]
    run_dir = run_dir_of(small_disk)
    assert latest_checkpoint(run_dir) is not None, sorted(str(p) for p in run_dir.rglob("*"))
    assert load_checkpoint(latest_checkpoint(run_dir)).round == 0  # the last good checkpoint is intact
    assert not [p for p in run_dir.rglob(".*.*") if p.name.startswith((".round_", ".in_round", ".rounds"))]

    (small_disk / "filler").unlink()
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_summary(run_dir).status == "complete"
    assert [r.round for r in read_rounds(run_dir)] == [0, 1, 2]
