"""Entropy probe pass vs plain eval pass, same model and batches, measured side by side in one process.

    python bench/entropy_overhead.py                       # CPU, both models
    python bench/entropy_overhead.py --device cuda --batch 256 --batches 20

Prints the median of interleaved torch.utils.benchmark timings of whole passes: a plain eval loop, the probe's own
loop with nothing hooked, and the probe; target: probe <= 1.10x plain eval.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils import benchmark

from nepenthe.entropy import measure_entropy
from nepenthe.models import create_model
from nepenthe.discovery import model_units
from nepenthe.units import activation_modules

SHAPES = {"compact_cnn": (1, 28, 28), "resnet18_cifar": (3, 32, 32)}


@torch.no_grad()
def plain_pass(model, batches):
    for x in batches:
        model(x)


def measure(name: str, device: torch.device, batch: int, count: int, repeats: int, threads: int):
    model = create_model(name, 10, SHAPES[name][0]).to(device).eval()
    acts = activation_modules(model, model_units(model))
    batches = [torch.randn(batch, *SHAPES[name], device=device) for _ in range(count)]
    timers = {
        "eval": benchmark.Timer("plain_pass(model, batches)", globals={"plain_pass": plain_pass, "model": model,
                                "batches": batches}, num_threads=threads),
        # the same pass with no activation hooked: isolates what the hooks cost from the loop around them
        "unhooked": benchmark.Timer("measure_entropy(model, {}, batches, device=device)",
                                    globals={"measure_entropy": measure_entropy, "model": model, "batches": batches,
                                             "device": device}, num_threads=threads),
        "probe": benchmark.Timer("measure_entropy(model, acts, batches, device=device)",
                                 globals={"measure_entropy": measure_entropy, "model": model, "acts": acts,
                                          "batches": batches, "device": device}, num_threads=threads),
    }
    for timer in timers.values():
        timer.timeit(1)  # warm-up (allocator, oneDNN/cuDNN kernel selection)
    samples = {key: [] for key in timers}
    for _ in range(repeats):  # interleaved, so drift in machine load hits both sides alike
        for key, timer in timers.items():
            samples[key].append(timer.timeit(1).mean)
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per side (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} batch={args.batch} batches/pass={args.batches} repeats={args.repeats} "
          f"torch={torch.__version__}")
    print(f"{'model':16} {'eval pass (ms)':>15} {'unhooked (ms)':>14} {'probe pass (ms)':>16} "
          f"{'probe/eval':>11} {'probe/unhooked':>15}")
    for name in args.models:
        t = measure(name, device, args.batch, args.batches, args.repeats, args.threads)
        print(f"{name:16} {1e3 * t['eval']:15.1f} {1e3 * t['unhooked']:14.1f} {1e3 * t['probe']:16.1f} "
              f"{t['probe'] / t['eval']:10.3f}x {t['probe'] / t['unhooked']:14.3f}x")


if __name__ == "__main__":
    main()
