"""Entropy probe pass vs plain eval pass, same model and batches, measured side by side in one process.

    python bench/entropy_overhead.py                       # CPU, both models
    python bench/entropy_overhead.py --device cuda --batch 256 --batches 20

Prints median times from torch.utils.benchmark and their ratio (target: probe <= 1.10x plain eval).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from nepenthe.entropy import measure_entropy
from nepenthe.models import create_model
from nepenthe.units import activation_modules, model_units

SHAPES = {"compact_cnn": (1, 28, 28), "resnet18_cifar": (3, 32, 32)}


@torch.no_grad()
def plain_pass(model, batches):
    for x in batches:
        model(x)


def measure(name: str, device: torch.device, batch: int, count: int, min_run_time: float, threads: int):
    model = create_model(name, 10, SHAPES[name][0]).to(device).eval()
    acts = activation_modules(model, model_units(model))
    batches = [torch.randn(batch, *SHAPES[name], device=device) for _ in range(count)]
    timers = {
        "eval": benchmark.Timer("plain_pass(model, batches)", globals={"plain_pass": plain_pass, "model": model,
                                "batches": batches}, num_threads=threads),
        "probe": benchmark.Timer("measure_entropy(model, acts, batches, device=device)",
                                 globals={"measure_entropy": measure_entropy, "model": model, "acts": acts,
                                          "batches": batches, "device": device}, num_threads=threads),
    }
    timers["eval"].timeit(1)  # warm-up (allocator, cuDNN autotune)
    timers["probe"].timeit(1)
    medians = {}
    for _ in range(2):  # alternate so drift in machine load hits both
        for key, timer in timers.items():
            medians.setdefault(key, []).append(timer.blocked_autorange(min_run_time=min_run_time).median)
    eval_s, probe_s = min(medians["eval"]), min(medians["probe"])
    return eval_s, probe_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} batch={args.batch} batches/pass={args.batches} "
          f"torch={torch.__version__}")
    print(f"{'model':16} {'eval pass (ms)':>15} {'probe pass (ms)':>16} {'ratio':>7}")
    for name in args.models:
        eval_s, probe_s = measure(name, device, args.batch, args.batches, args.min_run_time, args.threads)
        print(f"{name:16} {1e3 * eval_s:15.1f} {1e3 * probe_s:16.1f} {probe_s / eval_s:6.3f}x")


if __name__ == "__main__":
    main()
