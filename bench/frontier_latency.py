"""The frontier's latency axis, measured carefully: every finished run's exact collapsed network (its
``collapsed.onnx``) and the dense network each was pruned from, side by side in ONNX Runtime at batch 1, in
interleaved rounds, so that drifting machine load hits all of them alike and the spread between rounds shows.

    python bench/frontier_latency.py RUNS_FOLDER [RUNS_FOLDER ...] --out RESULTS/latency.csv --rounds 9

The in-run timing (``collapse.latency_*``: 2-3 rounds of 0.3-0.5 s) is too short for sub-millisecond networks: the
ResNet-18 study's EGP seed 0 network measured 0.75x in its own run and 1.11x here, same machine, minutes apart. Each
round times every network once for ``--min-run-time`` seconds (``torch.utils.benchmark``'s blocked autorange), in
turn; a network's latency is the median of its rounds' medians, its spread the lowest and highest round median.
The dense network is the first run's round 0 per (model, dataset), batch norms folded (what anyone would deploy of
it); weights do not change a dense network's latency, so one per architecture is timed. The fine-tuned collapsed
network has the exact one's layers (its batch norms are folded back): not timed again.

Writes one CSV row per network (run, network, model, dataset, median_ms, low_ms, high_ms, rounds, threads, ...)
that ``analysis.frontier`` reads (``analysis.reproduce`` picks up ``latency.csv`` in the results folder).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from nepenthe.collapse import fold_batchnorm_only
from nepenthe.collapse.export import OnnxRuntimeModel, export_onnx
from nepenthe.collapse.measure import latency_stats
from nepenthe.experiment import restore_run
from nepenthe.rundir import RunDir
from nepenthe.tracking import read_summary


def finished_runs(folders: list[str]) -> list[Path]:
    """Run directories under ``folders`` with a complete summary and an exported collapsed network."""
    found = []
    for folder in folders:
        for summary_file in sorted(Path(folder).rglob("summary.json")):
            run_dir = summary_file.parent
            summary = read_summary(run_dir)
            if summary is None or summary.status != "complete" or summary.collapse is None:
                continue
            if summary.collapse.onnx_file and (run_dir / summary.collapse.onnx_file).is_file():
                found.append(run_dir)
            else:
                print(f"warning: {run_dir} has no collapsed.onnx (collapse.onnx=false?): not timed", file=sys.stderr)
    return found


def architecture(run_dir: Path) -> tuple[str, str, str]:
    import yaml

    config = yaml.safe_load(RunDir(run_dir).config.read_text())
    return config["model"]["name"], config["dataset"]["name"], repr(sorted((config["model"].get("kwargs") or
                                                                            {}).items()))


def dense_onnx(run_dir: Path, path: Path) -> tuple[Path, torch.Tensor]:
    """The run's round-0 network with its batch norms folded, exported to ``path``, and one real input."""
    exp, _ = restore_run(run_dir, 0, device="cpu")
    batch = exp.verify_batch()
    export_onnx(fold_batchnorm_only(exp.model, batch), batch[:1], path)
    return path, batch[:1]


def measure(folders: list[str], rounds: int, min_run_time: float, threads: int) -> pd.DataFrame:
    runs = finished_runs(folders)
    if not runs:
        raise SystemExit(f"error: no finished run with a collapsed.onnx under {', '.join(folders)}")
    networks, rows, samples = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="nepenthe-frontier-") as tmp:
        for run_dir in runs:
            model, dataset, kwargs = architecture(run_dir)
            key = (model, dataset, kwargs)
            if key not in samples:
                path, samples[key] = dense_onnx(run_dir, Path(tmp) / f"dense_{len(samples)}.onnx")
                name = f"dense:{model}:{dataset}:{len(samples)}"
                networks[name] = OnnxRuntimeModel(path, threads=threads)
                rows[name] = {"run": "dense", "network": "dense", "model": model, "dataset": dataset,
                              "source_run": run_dir.name}
            networks[run_dir.name] = OnnxRuntimeModel(run_dir / "collapsed.onnx", threads=threads)
            rows[run_dir.name] = {"run": run_dir.name, "network": "collapsed", "model": model, "dataset": dataset,
                                  "source_run": run_dir.name}
        sample = next(iter(samples.values()))
        if len({tuple(s.shape) for s in samples.values()}) > 1:
            raise SystemExit("error: the runs take inputs of different shapes; time them in separate calls")
        medians: dict[str, list[float]] = {name: [] for name in networks}
        started = time.perf_counter()
        for index in range(rounds):
            stats = latency_stats(networks, sample, (1,), min_run_time=min_run_time, rounds=1, threads=threads)
            for name, per_batch in stats.items():
                medians[name].append(per_batch["batch_1"]["median"])
            print(f"round {index + 1}/{rounds} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = []
    for name, values in medians.items():
        out.append({**rows[name], "median_ms": statistics.median(values), "low_ms": min(values),
                    "high_ms": max(values), "rounds": rounds, "min_run_time_s": min_run_time, "threads": threads,
                    "runtime": "onnxruntime", "batch": 1, "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "measured": stamp})
    return pd.DataFrame(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="folders holding run directories (searched recursively)")
    parser.add_argument("--out", required=True, help="the CSV to write (analysis.frontier reads it)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per network per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = measure(args.folders, args.rounds, args.min_run_time, args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    dense = table[table["network"] == "dense"].set_index(["model", "dataset"])["median_ms"]
    for _, r in table.iterrows():
        speedup = dense.get((r["model"], r["dataset"]), float("nan")) / r["median_ms"]
        print(f"{r['run'][:90]:90s} {r['median_ms']:.4f} ms [{r['low_ms']:.4f}, {r['high_ms']:.4f}] "
              f"{speedup:.2f}x dense")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
