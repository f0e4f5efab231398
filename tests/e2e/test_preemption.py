"""A run killed inside a round (SIGKILL: no handler runs, as when a cluster preempts a job) loses at most the epoch in
progress: the next start resumes after the last completed epoch and writes the records an uninterrupted run writes."""

import os
import signal
import subprocess
import sys

import pytest
import time
from pathlib import Path

from nepenthe.rundir import RunDir
from nepenthe.store import load_in_round
from nepenthe.tracking import read_rounds, read_summary

from conftest import ROOT

EPOCHS = 6
OVERRIDES = [
    "dataset=synthetic", "dataset.kwargs.train_size=2000", "dataset.kwargs.val_size=100",
    "dataset.kwargs.test_size=100", "model.kwargs.width=8", "train.epochs=2", "train.batch_size=32",
    f"finetune.epochs={EPOCHS}", "stop.max_rounds=2", "stop.max_drop=100", "progress=false", "hardware=cpu",
    "hardware.threads=1", "collapse.latency_min_run_time=0.02", "collapse.latency_rounds=1", "collapse.verify_batch=32",
    "name=preempt",
]
TIMING = {"wall_time_s", "elapsed_s"}

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all


def command(root: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *OVERRIDES, f"output_root={root}"]


def run_dir_of(root: Path) -> Path | None:
    found = list((root / "preempt").glob("*/config.yaml"))
    return found[0].parent if found else None


def strip(records):
    return [{k: v for k, v in r.to_dict().items() if k not in TIMING} for r in records]


@pytest.mark.timeout(400)  # three whole runs as well
def test_a_run_killed_mid_fine_tune_resumes_after_its_last_epoch_and_matches_an_uninterrupted_run(tmp_path):
    reference = subprocess.Popen(command(tmp_path / "reference"), cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(command(tmp_path / "victim"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.monotonic() + 300
    while killed_at is None and victim.poll() is None and time.monotonic() < deadline:
        run_dir = run_dir_of(tmp_path / "victim")
        if run_dir is not None and RunDir(run_dir).in_round.is_file():
            saved = load_in_round(run_dir)
            # early in the round, so the kill lands well before the round completes even on a loaded machine
            if saved is not None and saved["round"] == 1 and 1 <= saved["fit"]["epoch"] <= 2:
                os.kill(victim.pid, signal.SIGKILL)
                killed_at = saved["fit"]["epoch"]
        time.sleep(0.02)
    victim.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed inside round 1"
    assert victim.returncode == -signal.SIGKILL
    run_dir = run_dir_of(tmp_path / "victim")
    assert [r.round for r in read_rounds(run_dir)] == [0] and read_summary(run_dir) is None

    resumed = subprocess.run(command(tmp_path / "victim"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # at most the epoch in progress was lost (the kill may land after a later save than the one we read)
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("resuming round 1 after epoch ")]
    assert len(lines) == 1, resumed.stdout
    assert killed_at <= int(lines[0].split("epoch ")[1].split("/")[0]) <= EPOCHS, (killed_at, lines)
    assert f"/{EPOCHS} from {RunDir(run_dir).in_round}" in lines[0]
    assert not RunDir(run_dir).in_round.exists()  # removed once the round completed

    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-2000:]
    expected = read_rounds(run_dir_of(tmp_path / "reference"))
    assert [r.round for r in expected] == [0, 1, 2]
    assert strip(read_rounds(run_dir)) == strip(expected)  # bit for bit: accuracies, losses, entropies, sparsity
    assert read_summary(run_dir).kept == read_summary(run_dir_of(tmp_path / "reference")).kept


@pytest.mark.timeout(400)  # three whole runs (victim, resumed, reference), each collapsed and timed: 124 s measured
@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM])
def test_a_requeue_or_preemption_signal_saves_at_the_next_batch_and_the_run_resumes_there(tmp_path, signum):
    """What Slurm sends before a time limit (SIGUSR2, through submitit) or on preemption (SIGTERM): the run stops at
    the next batch boundary, saves its place inside the epoch, says so in one line, and the same command resumes at
    that batch with the records an uninterrupted run writes."""
    victim = subprocess.Popen(command(tmp_path / "victim"), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    sent = False
    while not sent and victim.poll() is None and time.monotonic() < deadline:
        run_dir = run_dir_of(tmp_path / "victim")
        if run_dir is not None and RunDir(run_dir).in_round.is_file():
            saved = load_in_round(run_dir)
            if saved is not None and saved["round"] == 1 and saved["fit"]["epoch"] == 1:  # inside epoch 2 now
                time.sleep(0.3)
                victim.send_signal(signum)
                sent = True
        time.sleep(0.02)
    out, err = victim.communicate(timeout=120)
    assert sent, "the run finished before the signal"
    assert victim.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {name} in round 1 ") and \
        f"; saved {run_dir / 'checkpoints'}" in lines[0], err
    saved = load_in_round(run_dir)
    batch = saved["fit"].get("batch")
    assert saved["round"] == 1 and batch and 0 < batch < 2000 // 32 + 1  # inside an epoch, not at its end
    assert f"batch {batch}/" in lines[0]

    resumed = subprocess.run(command(tmp_path / "victim"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epoch = saved["fit"]["epoch"] + 1
    assert f"resuming round 1 at epoch {epoch}/{EPOCHS}, batch {batch} (a signal stopped it there)" in resumed.stdout
    reference = subprocess.run(command(tmp_path / "reference"), cwd=tmp_path, capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert strip(read_rounds(run_dir)) == strip(read_rounds(run_dir_of(tmp_path / "reference")))  # bit for bit
