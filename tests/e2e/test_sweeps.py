"""A sweep runs every job: one failing job records its error in its own run directory, the others complete, and the
command ends by listing the failed jobs with a non-zero exit code."""

import json
import subprocess
import sys

import pytest

from nepenthe.tracking import read_rounds, read_status, read_summary

import yaml

from conftest import FAST, ROOT, SYNTHETIC
from test_launchers import TINY

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all


def test_a_failing_job_does_not_stop_the_sweep_and_the_end_lists_it(tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, f"output_root={runs}", "name=sweep",
               "pruning.ratio=0.5,1.5,0.3"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    jobs = {d.name.split("pruning.ratio=")[1].split(",")[0]: d for d in (runs / "sweep").iterdir() if d.is_dir()}
    assert sorted(jobs) == ["0.3", "0.5", "1.5"]
    for ratio in ("0.5", "0.3"):  # job #2 ran after job #1 failed
        assert read_summary(jobs[ratio]).status == "complete"
        assert [r.round for r in read_rounds(jobs[ratio])] == [0, 1]
        assert read_status(jobs[ratio]) is None
    status = read_status(jobs["1.5"])
    assert status.status == "failed" and status.type == "ConfigError"
    assert status.error == "pruning.ratio=1.5 must lie strictly between 0 and 1 (e.g. 0.5)"
    assert "Traceback" in (jobs["1.5"] / "error.txt").read_text()
    assert not (jobs["1.5"] / "rounds.jsonl").exists()
    lines = done.stderr.strip().splitlines()
    assert f"error: job 1 ({jobs['1.5']}): {status.error}" in lines
    assert lines[-2:] == ["sweep finished: 1 of 3 jobs failed (status.json and error.txt in each):",
                          f"  {jobs['1.5']}: {status.error}"]
    assert "Traceback" not in done.stderr
    json.loads((jobs["1.5"] / "status.json").read_text())  # a whole file, never half-written


def test_multirun_two_seeds_get_their_own_directories(tmp_path):
    overrides = SYNTHETIC + [o for o in FAST if not o.startswith("stop.max_rounds")] + ["stop.max_rounds=1"]
    command = [sys.executable, "train.py", "-m", "seed=0,1", *overrides, f"output_root={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.parent for p in (tmp_path / "run").glob("*/config.yaml"))
    assert len(runs) == 2 and all("seed=" in p.name for p in runs)
    assert all(read_summary(p).status == "complete" for p in runs)
    seeds = [yaml.safe_load((p / "config.yaml").read_text())["seed"] for p in runs]
    assert seeds == [0, 1]
    assert read_rounds(runs[0])[0].train_loss != read_rounds(runs[1])[0].train_loss
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("is complete") == 2  # same directories, nothing retrained
