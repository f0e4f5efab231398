"""The CUDA path, on a GPU (``make gpu-check``; skipped, saying why, where torch sees no CUDA device): bf16 autocast,
channels_last, device-resident data, torch.compile, CUDA latency timing, NCCL with one process, and a tiny NEPENTHE
run whose collapse is verified on the GPU."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import SYNTHETIC, compose_config
from nepenthe.collapse.measure import latency_stats
from nepenthe.config import load_run_config
from nepenthe.data import create_data
from nepenthe.experiment import Experiment
from nepenthe.tracking import read_rounds

pytestmark = [pytest.mark.cuda, pytest.mark.timeout(300)]

ON_GPU = ["hardware=cuda", "model.kwargs.width=8", "train.epochs=2", "train.batch_size=64", "finetune.epochs=1",
          "stop.max_rounds=2", "stop.max_drop=100", "progress=false", "collapse.latency_min_run_time=0.05",
          "collapse.latency_rounds=1", "collapse.verify_batch=64", "collapse.onnx=false"]


def test_a_tiny_nepenthe_run_trains_probes_and_collapses_on_the_gpu(run_fast):
    summary, run_dir = run_fast(*ON_GPU, "collapse.runtimes=[eager]", data=SYNTHETIC)
    assert summary.device.startswith("cuda") and summary.status == "complete"
    records = read_rounds(run_dir)
    assert [r.round for r in records] == [0, 1, 2] and records[2].sparsity > records[1].sparsity > 0.3
    collapse = summary.collapse
    assert collapse.relative_diff_vs_original < 1e-4  # verified on the GPU against the kept model
    assert abs(collapse.test_acc - summary.kept.test_acc) <= 100 / 200  # at most one of 200 test images differs
    timed = collapse.latency_ms["eager"]
    assert collapse.latency_device.startswith("cuda")
    assert all(timed[m]["batch_1"] > 0 for m in ("kept", "bn_folded", "collapsed"))


def test_bf16_autocast_and_channels_last_train_on_the_gpu(run_fast):
    summary, run_dir = run_fast(*ON_GPU, "hardware.precision=bf16", "hardware.channels_last=true",
                                "stop.max_rounds=1", "collapse.runtimes=[eager]", data=SYNTHETIC)
    records = read_rounds(run_dir)
    assert summary.collapse.precision == "bf16" and records[1].train_loss < records[0].train_loss * 2
    assert 1e-6 < summary.collapse.relative_diff_run_precision < 0.2  # bf16 rounding, measured, never hidden


def test_torch_compile_trains_the_same_rounds_on_the_gpu(run_fast, tmp_path):
    eager, _ = run_fast(*ON_GPU, "stop.max_rounds=1", "collapse.enabled=false", run_dir=tmp_path / "eager",
                        data=SYNTHETIC)
    compiled, _ = run_fast(*ON_GPU, "stop.max_rounds=1", "collapse.enabled=false", "hardware.compile=true",
                           run_dir=tmp_path / "compiled", data=SYNTHETIC)
    assert compiled.kept.sparsity == eager.kept.sparsity  # the same plan: masks are decided on the same model
    assert abs(compiled.kept.test_acc - eager.kept.test_acc) <= 5.0  # kernels differ, training is short


def test_in_memory_data_lives_on_the_gpu_and_batches_are_built_there():
    data = create_data("synthetic", "data", train_size=256, val_size=64, test_size=64)
    images, labels = next(iter(data.loader("train", 32, device=torch.device("cuda"))))
    assert images.is_cuda and labels.is_cuda and images.shape[0] == 32
    exp = Experiment(load_run_config(compose_config(SYNTHETIC + ON_GPU)))
    assert next(iter(exp.train_loader))[0].is_cuda and next(exp.model.parameters()).is_cuda


def test_cuda_latency_is_timed_with_synchronisation():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).cuda().eval()
    small = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1)).cuda().eval()
    stats = latency_stats({"two": model, "one": small}, torch.randn(1, 3, 64, 64, device="cuda"), (1, 32),
                          min_run_time=0.1, rounds=2)
    for name in ("two", "one"):
        for size in ("batch_1", "batch_32"):
            s = stats[name][size]
            assert 0 < s["p25"] <= s["median"] <= s["p75"] and s["n"] >= 2
    assert stats["two"]["batch_32"]["median"] > stats["one"]["batch_32"]["median"]  # twice the convolutions


def test_nccl_initialises_with_one_process_and_reduces(tmp_path):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        t = torch.full((4,), 3.0, device="cuda")
        dist.all_reduce(t)
        assert dist.get_backend() == "nccl" and t.tolist() == [3.0] * 4
    finally:
        dist.destroy_process_group()
