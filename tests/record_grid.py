"""Run records for 2 models × 2 datasets × 4 methods × 2 seeds, written through nepenthe's own RunRecorder, with
numbers simple enough to check tables by hand; and the CSV that the W&B web UI exports from a runs table of the
same runs (W&B's columns, config dotted, summary as nepenthe logs it).

Every run has rounds 0..3. test top-1 = BASE[model, dataset] - DROP[method] * round + seed; val = test + 1.
k: entropy methods reach 0,1,2,3 (seed 0) and 0,1,1,2 (seed 1); IMP stays at 0. Sparsity 0.2 * round (entropy
methods) or 1 - 0.5 ** round (IMP). Seed 0 keeps round 2 (round 3 is past the stop rule), seed 1 keeps round 3.
The collapsed model removes k weight layers of the kept round and MACs_DENSE * (1 - 0.1 k).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from nepenthe.records import RoundRecord, Summary, flatten
from nepenthe.tracking import RunRecorder

MODELS = {"resnet18_cifar": (17, 18), "mobilenetv2_cifar": (35, 53)}  # N units, weight layers
DATASETS = ("cifar10", "tiny_imagenet")
METHODS = ("nepenthe", "egp", "easier", "imp")
SEEDS = (0, 1)
BASE = {("resnet18_cifar", "cifar10"): 92.0, ("resnet18_cifar", "tiny_imagenet"): 60.0,
        ("mobilenetv2_cifar", "cifar10"): 90.0, ("mobilenetv2_cifar", "tiny_imagenet"): 55.0}
DROP = {"nepenthe": 1.0, "egp": 0.5, "easier": 2.0, "imp": 0.25}
MACS_DENSE = 100_000_000
K = {0: [0, 1, 2, 3], 1: [0, 1, 1, 2]}
KEPT = {0: 2, 1: 3}  # by seed % 2, as K
LATENCY = {"kept": 8.0, "bn_folded": 6.0, "collapsed": 4.0}  # batch 1; batch 64 is 20 times that


def k_of(method: str, seed: int, round_index: int) -> int:
    return 0 if method == "imp" else K[seed % 2][round_index]


def sparsity_of(method: str, round_index: int) -> float:
    return 1 - 0.5 ** round_index if method == "imp" else 0.2 * round_index


def test_acc_of(model: str, dataset: str, method: str, seed: int, round_index: int) -> float:
    return BASE[model, dataset] - DROP[method] * round_index + seed


def one_run(model: str, dataset: str, method: str, seed: int):
    n_units, layers = MODELS[model]
    units = [f"u{i}" for i in range(n_units)]
    config = {"seed": seed, "model": {"name": model, "kwargs": {}}, "dataset": {"name": dataset, "root": "data",
              "kwargs": {}}, "pruning": {"method": method, "ratio": 0.5}, "hardware": {"precision": "fp32"},
              "train": {"milestones": [80, 120], "lr": 0.1}}
    records = []
    for r in range(4):
        k = k_of(method, seed, r)
        acc = test_acc_of(model, dataset, method, seed, r)
        records.append({"round": r, "method": method, "ratio": 0.5, "sparsity": sparsity_of(method, r),
                        "val_acc": acc + 1, "test_acc": acc, "k": k, "N": n_units,
                        "entropy": {u: 0.0 if i < k else round(0.9 - 0.1 * r, 3) for i, u in enumerate(units)},
                        "zero_entropy_units": units[:k]})
    kept = records[KEPT[seed % 2]]
    keys = ("round", "sparsity", "val_acc", "test_acc", "k", "N", "entropy", "zero_entropy_units")
    cost_dense = {"macs": MACS_DENSE, "macs_nonzero": MACS_DENSE, "params": 1_000_000, "params_nonzero": 1_000_000,
                  "weight_layers_on_longest_path": layers}
    cost_collapsed = {**cost_dense, "macs": int(MACS_DENSE * (1 - 0.1 * kept["k"])),
                      "weight_layers_on_longest_path": layers - kept["k"]}
    latency = {m: {"batch_1": ms, "batch_64": 20 * ms} for m, ms in LATENCY.items()}
    summary = {
        "status": "complete", "stop_reason": "max_drop", "rounds_completed": 3, "kept_round": kept["round"],
        "dense": {k: records[0][k] for k in keys}, "kept": {k: kept[k] for k in keys}, "k": kept["k"],
        "N": n_units, "depth": f"{kept['k']}/{n_units}", "zero_entropy_units": kept["zero_entropy_units"],
        "trajectory": {str(r["round"]): {k: r[k] for k in ("sparsity", "val_acc", "test_acc", "k", "N")}
                       for r in records},
        "cost": {"dense": cost_dense, "kept": cost_dense, "collapsed": cost_collapsed},
        "collapse": {"test_acc": kept["test_acc"], "val_acc": kept["val_acc"], "max_abs_diff": 1e-6,
                     "relative_diff_vs_original": 2e-7, "precision": "fp32", "latency_ms": {"eager": latency},
                     "latency_iqr_ms": {"eager": {m: {b: 0.1 * v for b, v in t.items()} for m, t in latency.items()}},
                     "latency_repeats": 5, "latency_threads": 2, "latency_device": "cpu",
                     "latency_precision": "fp32"},
        "config_hash": "0" * 16, "device": "cpu", "wall_time_s": 1.0,
    }
    return config, records, summary


def write_grid(folder: Path) -> list[Path]:
    """The 32 run directories, written with RunRecorder exactly as a run writes them."""
    dirs = []
    for model in MODELS:
        for dataset in DATASETS:
            for method in METHODS:
                for seed in SEEDS:
                    config, records, summary = one_run(model, dataset, method, seed)
                    run_dir = folder / f"{model}-{dataset}" / f"{method}-s{seed}"
                    run_dir.mkdir(parents=True)
                    recorder = RunRecorder(run_dir)
                    recorder.write_config(yaml.safe_dump(config))
                    for record in records:
                        recorder.round(RoundRecord.from_dict(record, schema=2))
                    recorder.summary(Summary.from_dict(summary, schema=3))
                    dirs.append(run_dir)
    return dirs


def _dotted(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return flat


def wandb_export(run_dirs: list[Path], path: Path, unfinished: Path | None = None) -> Path:
    """The runs table as the W&B web UI exports it: W&B's own columns, the config dotted, the summary as W&B holds
    it — nepenthe's flattened summary over the last logged round (W&B's summary starts as the last history row)."""
    rows = []
    for i, run_dir in enumerate(run_dirs + ([unfinished] if unfinished else [])):
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        last = json.loads((run_dir / "rounds.jsonl").read_text().splitlines()[-1])
        summary_file = run_dir / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        row = {"Name": run_dir.name, "State": "finished" if summary else "crashed", "Notes": "-", "User": "me",
               "Tags": "", "Created": f"2026-11-23T10:{i:02d}:00.000Z", "Runtime": 120 + i, "Sweep": ""}
        row.update(_dotted(config))
        row.update(flatten(last))
        if summary:
            row.update(flatten(summary))
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
