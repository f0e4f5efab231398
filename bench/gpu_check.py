"""``make gpu-check``: the CUDA path on the GPU of this machine, in one short run with a compact report.

    python bench/gpu_check.py                 # the cuda test tier, then one throughput comparison
    python bench/gpu_check.py --skip-bench    # the tests only

1. ``pytest -m cuda tests/cuda`` (bf16 autocast, channels_last, device-resident data, torch.compile, CUDA latency
   timing, NCCL with one process, a tiny NEPENTHE run collapsed and verified on the GPU);
2. ``bench/train_throughput.py`` on the GPU (ResNet-18, bf16, channels_last) against the loop written the way the
   published EGP code trains, interleaved in one process.

Each step has its own time limit so that the whole check stays under 8 minutes on one GPU. Without a CUDA device it
says so in one line and exits 1; it exits 1 too when a test fails or a step runs out of time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TEST_LIMIT_S, BENCH_LIMIT_S = 330, 120


def run(command: list[str], limit_s: float) -> tuple[int | None, str, float]:
    """(exit code or None when it ran out of time, its output, seconds)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit_s)
        return done.returncode, done.stdout + done.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out, time.perf_counter() - start


def last_line(text: str, containing: str) -> str:
    found = [line for line in text.splitlines() if containing in line]
    return found[-1].strip() if found else "(no such line in its output)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-bench", action="store_true", help="run the cuda test tier only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (torch.cuda.is_available() is False); run it on a machine with a GPU")
        return 1
    props = torch.cuda.get_device_properties(0)
    report = [f"gpu-check on {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    code, out, seconds = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/cuda", "-p",
                              "no:cacheprovider"], TEST_LIMIT_S)
    failed = code != 0
    verdict = "out of time" if code is None else last_line(out, "passed" if code == 0 else "failed")
    report.append(f"cuda tests ({seconds:.0f} s): {verdict}")
    if failed:
        report += ["  " + line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))][:10]
    if not args.skip_bench:
        code, out, seconds = run([sys.executable, "bench/train_throughput.py", "--device", "cuda", "--precision",
                                  "bf16", "--channels-last", "--models", "resnet18_cifar", "--images", "5120",
                                  "--repeats", "3"], BENCH_LIMIT_S)
        failed |= code != 0
        report.append(f"throughput ({seconds:.0f} s): " + ("out of time" if code is None else
                      "; ".join(line.strip() for line in out.splitlines() if line.startswith("ratio")) or
                      last_line(out, "Error")))
    print("\n".join(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
