"""Sweeps against a real Slurm: scripts/slurm_local.sh builds a one-node cluster on this machine (munge, slurmctld,
slurmd, slurmdbd + MariaDB for the accounting submitit reads), and these tests submit through conf/hydra/launcher/
slurm.yaml as a person would. Skipped, with the reason, where the cluster cannot be built (not root, no apt-get)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.collect import local_runs, to_frame
from nepenthe.rundir import RunDir
from nepenthe.store import load_in_round
from nepenthe.tracking import read_rounds, read_status, read_summary

from conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
CLUSTER_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/nepenthe-slurm"))
TIMING = {"wall_time_s", "elapsed_s"}
TINY = [
    "dataset=synthetic", "dataset.kwargs.train_size=300", "dataset.kwargs.val_size=100", "dataset.kwargs.test_size=100",
    "model.kwargs.width=8", "train.epochs=1", "train.batch_size=32", "finetune.epochs=1", "stop.max_rounds=1",
    "stop.max_drop=100", "progress=false", "hardware=cpu", "hardware.threads=1", "collapse.latency_min_run_time=0.02",
    "collapse.latency_rounds=1", "collapse.verify_batch=32",
]


def replace(base: list[str], *changes: str) -> list[str]:
    """``base`` with the keys of ``changes`` set to their new values (Hydra refuses a key given twice)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(changes)


# a run long enough to be interrupted inside a round: about 90 s on one core of a 2-core Xeon (76.7 s measured with
# 12 000 images), longer than the 30-60 s after which Slurm sends the time-limit signal of the test below
LONG = replace(TINY, "dataset.kwargs.train_size=15000", "train.epochs=3", "finetune.epochs=6", "stop.max_rounds=2")
ONE_CORE = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]


@pytest.fixture(scope="module")
def slurm_env():
    """The environment that reaches the cluster; starts it when it is not up, and stops only what it started."""
    if os.geteuid() != 0:
        pytest.skip("a real Slurm needs root: scripts/slurm_local.sh installs slurm-wlm and munge and starts daemons")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("no Slurm installed and no apt-get to install slurm-wlm, munge, slurmdbd, mariadb-server")
    env = dict(os.environ, SLURM_CONF=str(CLUSTER_DIR / "slurm.conf"))
    already_up = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    if not already_up:
        started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    yield env
    if not already_up:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def sweep(root: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "-m", *overrides, f"output_root={root}", "name=sweep"]


def run_dirs(root: Path, **where) -> list[Path]:
    """The sweep's run directories, those whose config.yaml has ``where``'s values (``train__epochs=12`` reads
    ``train.epochs``): a run directory's name is cut short and hashed when the overrides are long."""
    import yaml

    found = []
    for path in sorted((root / "sweep").glob("*/config.yaml")):
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):  # being written
            continue
        values = {}
        for key in where:
            value = config
            for part in key.split("__"):
                value = value.get(part) if isinstance(value, dict) else None
            values[key] = value
        if values == where:
            found.append(path.parent)
    return found


def job_logs(root: Path) -> str:
    """Every job's stdout and stderr as submitit kept them (one folder per array task)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted((root / "sweep" / ".submitit").glob("*/*_log.*")))


def array_job_ids(root: Path) -> list[str]:
    """The submitted jobs' ids in sweep order: ``<array id>_<index>`` for an array, the plain id when submitit
    submitted a single job."""
    import re

    ids = {p.name for p in (root / "sweep" / ".submitit").iterdir()
           if p.is_dir() and re.fullmatch(r"\d+(_\d+)?", p.name)}
    tasks = {i for i in ids if "_" in i} or ids  # an array also leaves a folder named by its own id
    return sorted(tasks, key=lambda i: [int(n) for n in i.split("_")])


UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED"}


def accounting(job_id: str, env, deadline_s: float = 60) -> list[str]:
    """The states sacct holds for every attempt of a job (-D: requeued attempts too), once its last attempt has
    ended there (slurmctld hands a job's end to slurmdbd a few seconds after the job itself ends)."""
    deadline = time.monotonic() + deadline_s
    while True:
        out = subprocess.run(["sacct", "-j", job_id, "-D", "-X", "-n", "-P", "-o", "State"], env=env,
                             capture_output=True, text=True, timeout=60).stdout
        states = [line.split()[0] for line in out.splitlines() if line.strip()]
        if (states and states[-1] not in UNFINISHED) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def wait_for_training(run_dir_glob, deadline_s: float = 300, process=None) -> Path:
    """The run directory once its first in-round checkpoint exists (the job is inside a round)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for run_dir in run_dir_glob():
            if RunDir(run_dir).in_round.is_file() and load_in_round(run_dir) is not None:
                return run_dir
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep ended before training started: {process.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("no job started training within the deadline")


def job_field(job_id: str, env, name: str) -> str | None:
    """One field of ``scontrol show job`` (``Restarts``, ``JobState``, ...)."""
    import re

    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True,
                         timeout=60).stdout
    found = re.search(rf"\b{name}=(\S+)", out)
    return found.group(1) if found else None


def let_the_requeued_attempt_finish(runs: Path, env, minutes: int = 15, deadline_s: float = 400) -> str:
    """Once the job has been requeued, give its next attempt ``minutes`` and lift the ~2 minutes Slurm holds a
    requeued job (BeginTime, set when the requeue completes: hence the wait for PENDING), as an administrator would:
    one interruption is what the tests need, and on a slow or busy machine a 2-minute limit could otherwise interrupt
    every attempt before it gets far (6 attempts, 16 minutes, seen in CI). Returns the job id."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ids = array_job_ids(runs) if (runs / "sweep" / ".submitit").is_dir() else []
        if ids and int(job_field(ids[-1], env, "Restarts") or 0) >= 1:
            job = ids[-1]
            state = job_field(job, env, "JobState")
            if state == "PENDING":  # the requeue has completed (a job still completing refuses updates)
                subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}", "StartTime=now"],
                               env=env, check=True, capture_output=True, timeout=60)
                return job
            if state == "COMPLETED":  # (Slurm holds a requeued job ~2 minutes: PENDING is seen long before)
                return job
        time.sleep(0.5)
    raise AssertionError(f"the job was not requeued within {deadline_s:.0f} s")


def strip(records):
    return [{k: v for k, v in r.to_dict().items() if k not in TIMING} for r in records]


def reference_run(root: Path, overrides: list[str]) -> subprocess.Popen:
    """The same run without the cluster, uninterrupted (no -m: one process here)."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, f"output_root={root}", "name=sweep"],
                            cwd=root.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_two_job_sweep_completes_on_slurm_and_is_collected(slurm_env, tmp_path):
    runs = tmp_path / "runs"
    done = subprocess.run(sweep(runs, [*ONE_CORE, *TINY, "seed=0,1"]), cwd=tmp_path, env=slurm_env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    dirs = run_dirs(runs)
    assert len(dirs) == 2
    for run_dir in dirs:
        assert read_summary(run_dir).status == "complete"
        assert (run_dir / "collapsed.pt2").is_file()
    ids = array_job_ids(runs)
    assert len(ids) == 2 and ids[0].split("_")[0] == ids[1].split("_")[0]  # one array of two tasks
    assert all(accounting(i, slurm_env) == ["COMPLETED"] for i in ids)
    frame = to_frame(local_runs([str(runs)]))
    assert sorted(frame.loc[frame["is_kept"], "seed"].tolist()) == [0, 1]


def test_a_job_slurm_cancels_is_recorded_as_failed_the_sweep_waits_for_the_others_and_a_resubmission_resumes_it(
        slurm_env, tmp_path):
    runs = tmp_path / "runs"
    # job 0 is short, job 1 trains long enough to be cancelled inside its dense round
    command = sweep(runs, [*ONE_CORE, *replace(LONG, "train.epochs=1,12")])
    submitter = subprocess.Popen(command, cwd=tmp_path, env=slurm_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    victim = wait_for_training(lambda: run_dirs(runs, train__epochs=12), process=submitter)
    ids = array_job_ids(runs)
    subprocess.run(["scancel", ids[1]], env=slurm_env, check=True, timeout=60)
    out, err = submitter.communicate(timeout=600)

    assert submitter.returncode == 1, err[-3000:]
    assert "sweep finished: 1 of 2 jobs failed" in err
    assert "Traceback" not in err  # one line per failed job, no launcher traceback
    status = read_status(victim)
    assert status is not None and status.status == "failed"
    assert (status.written_by, status.type, status.job_id) == ("submitter", "CANCELLED", ids[1])
    assert f"job {ids[1]} ended CANCELLED without a result" in status.error
    short = run_dirs(runs, train__epochs=1)
    assert len(short) == 1 and read_summary(short[0]).status == "complete"  # the other job ran to the end
    assert accounting(ids[1], slurm_env)[-1] == "CANCELLED"
    saved = load_in_round(victim)
    assert saved is not None and saved["fit"].get("batch")  # scancel's SIGTERM: saved at the next batch

    again = subprocess.run(command, cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep finished" not in again.stderr
    assert read_status(victim) is None and read_summary(victim).status == "complete"
    logs = job_logs(runs)
    assert f"{short[0]} is complete" in logs  # the finished run was skipped
    epoch, batch = saved["fit"]["epoch"] + 1, saved["fit"]["batch"]
    assert f"resuming round 0 at epoch {epoch}/12, batch {batch} (a signal stopped it there)" in logs


def test_a_time_limit_requeues_the_job_which_resumes_inside_its_round_with_the_records_of_an_uninterrupted_run(
        slurm_env, tmp_path):
    runs, reference_root = tmp_path / "runs", tmp_path / "reference"
    reference_root.mkdir()
    reference = reference_run(reference_root, LONG)
    # a two-minute limit with SIGUSR2 a minute before it: Slurm signals 30-60 s into the first attempt, inside the
    # dense round (the run needs ~90 s); the requeued attempt is given the time to finish
    launcher = [*ONE_CORE, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60"]
    submitter = subprocess.Popen(sweep(runs, [*launcher, *LONG]), cwd=tmp_path, env=slurm_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    let_the_requeued_attempt_finish(runs, slurm_env)
    out, err = submitter.communicate(timeout=600)
    assert submitter.returncode == 0, err[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    [run_dir] = run_dirs(runs)
    logs = job_logs(runs)
    assert "stopped by SIGUSR2" in logs and "this job is timed-out" in logs  # submitit requeued it on the signal
    assert "(a signal stopped it there)" in logs  # the requeued job resumed at the batch it saved
    [job_id] = array_job_ids(runs)
    states = accounting(job_id, slurm_env)
    assert states[-1] == "COMPLETED" and "REQUEUED" in states[:-1], states
    assert strip(read_rounds(run_dir)) == strip(read_rounds(run_dirs(reference_root)[0]))
    assert read_summary(run_dir).kept == read_summary(run_dirs(reference_root)[0]).kept


def test_a_job_preempted_by_a_higher_priority_partition_is_requeued_and_resumes_inside_its_round(slurm_env, tmp_path):
    runs, reference_root = tmp_path / "runs", tmp_path / "reference"
    reference_root.mkdir()
    cpus = os.cpu_count()
    # the job takes every CPU of the node, so the urgent job can only run by preempting it
    command = sweep(runs, ["hydra/launcher=slurm", f"hydra.launcher.cpus_per_task={cpus}", "hydra.launcher.mem_gb=2",
                           *LONG])
    submitter = subprocess.Popen(command, cwd=tmp_path, env=slurm_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    victim = wait_for_training(lambda: run_dirs(runs), process=submitter)
    urgent = subprocess.run(["sbatch", "--partition=urgent", f"--cpus-per-task={cpus}", "--mem=1G",
                             "--output=/dev/null", "--wrap=sleep 5"], env=slurm_env, capture_output=True, text=True,
                            check=True, timeout=60)
    assert urgent.stdout.startswith("Submitted batch job")
    reference = reference_run(reference_root, LONG)
    let_the_requeued_attempt_finish(runs, slurm_env)
    out, err = submitter.communicate(timeout=600)
    assert submitter.returncode == 0, err[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    [job_id] = array_job_ids(runs)
    states = accounting(job_id, slurm_env)
    assert states[-1] == "COMPLETED" and "PREEMPTED" in states[:-1], states
    logs = job_logs(runs)
    assert f"stopped by {signal.SIGTERM.name}" in logs and "(a signal stopped it there)" in logs
    assert strip(read_rounds(victim)) == strip(read_rounds(run_dirs(reference_root)[0]))


def test_make_reproduce_table1_smoke_submits_to_a_cpu_only_cluster_with_the_preset_resources(slurm_env, tmp_path):
    """The smoke sweep's jobs ask for what a CPU run needs (no GPU), so they are accepted by a node without GPUs;
    one job of the sweep, shrunk to seconds."""
    if not (ROOT / "data" / "FashionMNIST" / "raw").is_dir():
        pytest.skip("Fashion-MNIST is not prepared under data/ (make install does it)")
    shrink = ["dataset.kwargs.train_subset=600", "train.epochs=1", "finetune.epochs=1", "stop.max_rounds=1",
              "collapse.latency_min_run_time=0.02", "collapse.latency_rounds=1"]
    done = subprocess.run(["make", "-s", "-o", "install", "reproduce-table1", "SCALE=smoke", "LAUNCHER=slurm",
                           f"RUNS={tmp_path / 'runs'}", f"RESULTS={tmp_path / 'results'}",
                           "ONLY=pruning=nepenthe seed=0", f"EXTRA={' '.join(shrink)}"],
                          cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "hydra/launcher=slurm" in done.stdout and "(1 jobs)" in done.stdout
    frame = to_frame(local_runs([str(tmp_path / "runs")]))
    assert frame.loc[frame["is_kept"], "method"].tolist() == ["nepenthe"]
    assert (tmp_path / "results" / "smoke" / "table1.md").is_file()
    [submission] = (tmp_path / "runs" / "table1_smoke" / ".submitit").glob("*/*_submission.sh")
    script = submission.read_text()
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=8GB" in script
    gpu_lines = [line for line in script.splitlines() if "gpu" in line or "gres" in line]
    assert gpu_lines in ([], ["#SBATCH --gpus-per-node=0"]), gpu_lines  # asks for no GPU


def test_a_two_task_job_trains_one_run_data_parallel_through_srun(slurm_env, tmp_path):
    """``tasks_per_node=2``: submitit starts both tasks with srun, the run joins them into one Gloo process group
    from Slurm's variables (SLURM_PROCID, SLURM_NTASKS, the job's first node), and process 0 alone writes."""
    runs = tmp_path / "runs"
    vit = ["model=timm", "model.kwargs.arch=vit_tiny_patch16_224", "+model.kwargs.img_size=16",
           "+model.kwargs.patch_size=4", "+model.kwargs.depth=2", "pruning=imp", "collapse.enabled=false"]
    done = subprocess.run(sweep(runs, ["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
                                       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                                       *[o for o in TINY if not o.startswith("model.kwargs.width")], *vit]),
                          cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = run_dirs(runs)
    assert read_summary(run_dir).status == "complete" and [r.round for r in read_rounds(run_dir)] == [0, 1]
    [job_id] = array_job_ids(runs)
    folder = runs / "sweep" / ".submitit" / job_id
    task0, task1 = (folder / f"{job_id}_{task}_log.out" for task in (0, 1))
    assert " x 2 processes (gloo) | " in task0.read_text()  # process 0: the banner and the round table
    assert task1.is_file() and "round sparsity" not in task1.read_text()  # process 1 trained, printed nothing
    assert accounting(job_id, slurm_env) == ["COMPLETED"]
