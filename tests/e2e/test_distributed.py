"""One run across processes with torch.distributed (Gloo on CPU, real processes): the probe's counts are the
single-process counts, the processes' masks are checked equal, a 2-process run records what a 1-process run with the
same global batch records, and a killed process ends the run with one line and a state any N resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import ROOT
from nepenthe import distributed
from nepenthe.entropy import ProbeSettings, measure_entropy
from nepenthe.tracking import read_rounds, read_summary

pytestmark = pytest.mark.e2e  # subprocesses: in make test-all

# A small ViT (LayerNorm: no statistic depends on how the batch is split, so N processes train exactly what one does)
VIT = ["model=timm", "model.kwargs.arch=vit_tiny_patch16_224", "+model.kwargs.img_size=16", "+model.kwargs.patch_size=4",
       "+model.kwargs.depth=2"]
RUN = ["dataset=synthetic", "dataset.kwargs.train_size=600", "dataset.kwargs.val_size=200",
       "dataset.kwargs.test_size=200", "train.epochs=2", "train.batch_size=32", "finetune.epochs=1",
       "stop.max_rounds=2", "stop.max_drop=100", "progress=false", "hardware=cpu", "hardware.threads=1",
       "collapse.enabled=false", "pruning=imp", "name=ddp"]
TIMING = {"wall_time_s", "elapsed_s"}


def two_processes(worker, tmp_path, *args, timeout: float = 120) -> list[int]:
    """``worker(rank, store, *args, out)`` in two spawned processes joined through a file store; their exit codes."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(r, str(tmp_path / "store"), *args, str(tmp_path / "out")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    return [p.exitcode for p in procs]


def _probe_worker(rank: int, store: str, batches, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU())
    for pooling in ("dataset", "batch"):
        stats = measure_entropy(model, {"1": model[1], "3": model[3]}, batches,
                                ProbeSettings(pooling=pooling, zero_state="off"), collective=distributed.current())
        torch.save({n: (s.p_on, s.entropy, s.positions) for n, s in stats.items()}, f"{out}.{pooling}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("n_batches", [5, 1])  # 5: 3 on rank 0, 2 on rank 1; 1: rank 1 sees none
def test_the_probe_counts_of_two_processes_are_the_single_process_counts(tmp_path, n_batches):
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(7, 1, 9, 9, generator=g) for _ in range(n_batches)]
    assert two_processes(_probe_worker, tmp_path, batches) == [0, 0]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU())
    for pooling in ("dataset", "batch"):
        alone = measure_entropy(model, {"1": model[1], "3": model[3]}, batches,
                                ProbeSettings(pooling=pooling, zero_state="off"))
        for rank in (0, 1):  # every process ends with the counts of all the batches
            shared = torch.load(tmp_path / f"out.{pooling}.{rank}")
            for name, s in alone.items():
                p_on, entropy, positions = shared[name]
                assert torch.equal(p_on, s.p_on) and positions == s.positions  # the same counts, exactly
                assert entropy == pytest.approx(s.entropy, abs=1e-12)


def _batchnorm_fit_worker(rank: int, store: str, out: str) -> None:
    from nepenthe.config import TrainConfig
    from nepenthe.engine import TrainingPlan, fit

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 3))
    g = torch.Generator().manual_seed(10 + rank)  # each process trains on its own batches, as a shard would
    loader = [(torch.randn(8, 1, 9, 9, generator=g) * (1 + rank), torch.randint(0, 3, (8,), generator=g))
              for _ in range(3)]
    group = distributed.ProcessGroup()
    fit(model, loader, TrainingPlan(TrainConfig(epochs=2, lr=0.1, schedule="constant"), collective=group),
        wrap=group.wrapper(torch.device("cpu"), sync_batchnorm=False))
    torch.save({name: b.clone() for name, b in model.named_buffers()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_after_a_distributed_fit_every_process_holds_the_batch_norm_statistics_of_process_0(tmp_path):
    assert two_processes(_batchnorm_fit_worker, tmp_path) == [0, 0]
    zero, one = (torch.load(tmp_path / f"out.{r}") for r in (0, 1))
    assert zero["1.running_mean"].abs().sum() > 0 and int(zero["1.num_batches_tracked"]) == 6  # it trained
    for name in zero:
        assert torch.equal(zero[name], one[name]), name


def _disagreeing_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    mask = torch.ones(4, dtype=torch.bool)
    mask[rank] = False  # rank 1 prunes another weight than rank 0
    try:
        distributed.ProcessGroup().check_same("the masks of round 3", {"fc": mask})
    except distributed.DistributedError as exc:
        Path(f"{out}.{rank}").write_text(str(exc))
    dist.destroy_process_group()


def test_processes_that_disagree_on_the_masks_are_stopped_naming_them(tmp_path):
    two_processes(_disagreeing_worker, tmp_path, timeout=60)  # each writes the error it caught
    for rank in (0, 1):
        assert (tmp_path / f"out.{rank}").read_text() == (
            "the processes disagree on the masks of round 3: rank(s) 1 differ from rank 0; they must hold the same "
            "model (was a process started with another config or checkpoint?)")


def torchrun(n: int, root: Path, *extra, port: int, wait=True, timeout=600):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={port}",
               str(ROOT / "train.py"), *VIT, *RUN, f"output_root={root}", *extra]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_dir_of(root: Path) -> Path:
    (found,) = [p.parent for p in (root / "ddp").glob("*/config.yaml")]
    return found


def test_two_processes_record_what_one_process_records_with_the_same_global_batch(tmp_path):
    two = torchrun(2, tmp_path / "two", port=29621)
    assert two.returncode == 0, two.stderr[-3000:]
    one = torchrun(1, tmp_path / "one", port=29622)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = read_rounds(run_dir_of(tmp_path / "two")), read_rounds(run_dir_of(tmp_path / "one"))
    assert [r.round for r in a] == [r.round for r in b] == [0, 1, 2]
    for x, y in zip(a, b):
        # the same batches, gradients averaged over the processes: equal up to the order floats were added in
        assert x.sparsity == y.sparsity and x.pruned == y.pruned
        assert abs(x.val_acc - y.val_acc) <= 1.0 and abs(x.test_acc - y.test_acc) <= 1.0  # two images of 200
        assert x.train_loss == pytest.approx(y.train_loss, rel=1e-3)
        assert x.val_loss == pytest.approx(y.val_loss, rel=1e-2)
        assert all(abs(x.entropy[u] - y.entropy[u]) < 0.02 for u in x.entropy)
    assert two.stdout.count("round sparsity") == 1  # process 0 alone printed the table (and wrote the records)
    assert " x 2 processes (gloo) | " in two.stdout and " processes (" not in one.stdout  # the banner says so
    assert "disagree" not in two.stderr  # the masks were compared after every round
    # the records say how many processes ran it: every round, the summary and the head of config.yaml
    assert [r.processes for r in a] == [2, 2, 2] and [r.processes for r in b] == [1, 1, 1]
    two_summary, one_summary = read_summary(run_dir_of(tmp_path / "two")), read_summary(run_dir_of(tmp_path / "one"))
    assert (two_summary.processes, two_summary.backend) == (2, "gloo")
    assert (one_summary.processes, one_summary.backend) == (1, None)
    assert (run_dir_of(tmp_path / "two") / "config.yaml").read_text().startswith("# run on 2 processes (gloo)\n")
    assert (run_dir_of(tmp_path / "one") / "config.yaml").read_text().startswith("# run on 1 process\n")


def test_a_killed_process_ends_the_run_with_one_line_and_another_number_of_processes_resumes_it(tmp_path):
    run = torchrun(2, tmp_path, "train.epochs=6", "finetune.epochs=3", port=29623, wait=False)
    deadline = time.monotonic() + 300
    killed = False
    while not killed and run.poll() is None and time.monotonic() < deadline:
        found = list((tmp_path / "ddp").glob("*/checkpoints/round_000.pt"))
        if found:
            time.sleep(1.0)  # inside round 1 now
            children = subprocess.run(["pgrep", "-f", "-P", str(run.pid), "train.py"], capture_output=True,
                                      text=True).stdout.split()
            workers = sorted(int(p) for p in children)
            os.kill(workers[-1], signal.SIGKILL)  # one worker dies as an out-of-memory kill would end it
            killed = True
        time.sleep(0.1)
    out, err = run.communicate(timeout=300)
    assert killed and run.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error: process ")]
    assert len(ours) == 1 and "another process of this distributed run stopped" in ours[0], err[-3000:]
    assert "run the same command again to resume (with any number of processes)" in ours[0]
    run_dir = run_dir_of(tmp_path)
    assert read_summary(run_dir) is None and read_rounds(run_dir)[0].round == 0

    resumed = torchrun(1, tmp_path, "train.epochs=6", "finetune.epochs=3", port=29624)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after round 0" in resumed.stdout or "resuming round 1" in resumed.stdout
    assert [r.round for r in read_rounds(run_dir)] == [0, 1, 2] and read_summary(run_dir).status == "complete"
