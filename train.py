"""Entropy-guided depth reduction, one run per override set.

    python train.py                                   # NEPENTHE, compact CNN, Fashion-MNIST (conf/config.yaml)
    python train.py experiment=quickstart             # the README's main job
    python train.py -m seed=0,1 pruning=nepenthe,imp  # a sweep; each job gets its own run directory

The run directory is derived from the overrides, so re-running a command resumes from its last completed round.
Data flow: compose → validate → create_data → create_model → units → fit dense → loop[probe → plan → prune →
fit → evaluate → record → checkpoint → stop?] → keep the last round within max_drop → collapse → verify → summary.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import sys
import time
from pathlib import Path

import hydra
import torch
import torchvision
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import nepenthe
from nepenthe.checkpoint import (CHECKPOINT_DIR, checkpoint_path, latest_checkpoint, load_checkpoint,
                                 remove_stale_temp_files, save_checkpoint)
from nepenthe.config import RunConfig, config_diff, config_hash, load_run_config, semantic_dict
from nepenthe.errors import ConfigError, NepentheError
from nepenthe.experiment import Experiment
from nepenthe.metrics import cost_report
from nepenthe.pruning.methods import PruningPlan, apply_plan
from nepenthe.report import format_collapse, format_round_row, format_table_header
from nepenthe.rundir import Preexisting, remove_unused_run_dir
from nepenthe.tracking import CONFIG_FILE, RUN_OUTPUT_DIRS, RUN_OUTPUT_FILES, RunRecorder, read_summary

log = logging.getLogger("nepenthe")


def run_id(overrides: str) -> str:
    """Directory name for an override set: readable, filesystem-safe, bounded in length."""
    if not overrides:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9=,._+-]", "_", overrides)
    if len(safe) <= 200:  # well under the usual 255-byte file-name limit
        return safe
    return safe[:180] + "-" + hashlib.sha256(overrides.encode()).hexdigest()[:12]


OmegaConf.register_new_resolver("nepenthe_run_id", run_id, replace=True)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Type-check the composed config against the schema and validate names and ranges."""
    return load_run_config(cfg)


def stop_reason(cfg: RunConfig, records: list[dict], plan: PruningPlan | None) -> str | None:
    last, dense = records[-1], records[0]
    if last["val_acc"] < dense["val_acc"] - cfg.stop.max_drop:
        return "accuracy_drop"
    if cfg.stop.target_zero_units is not None and last["k"] >= cfg.stop.target_zero_units:
        return "target_zero_units"
    if last["round"] >= cfg.stop.max_rounds:
        return "max_rounds"
    if plan is not None and plan.is_empty:
        return "nothing_to_prune"
    return None


def kept_round(records: list[dict], max_drop: float) -> int:
    """The last round whose validation accuracy is within ``max_drop`` points of dense (round 0 always is)."""
    floor = records[0]["val_acc"] - max_drop
    return max(r["round"] for r in records if r["val_acc"] >= floor)


def clear_records(run_dir: Path) -> None:
    """``resume=false``: every output of a previous run in this directory goes (config.yaml is rewritten next)."""
    for name in RUN_OUTPUT_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_OUTPUT_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def resume_point(cfg: RunConfig, run_dir: Path):
    """``(checkpoint dict or None)``; refuses to resume a directory that holds a run of another config."""
    remove_stale_temp_files(run_dir)
    if not cfg.resume:
        clear_records(run_dir)
        return None
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    ckpt = load_checkpoint(path)
    diffs = config_diff(ckpt["config"], semantic_dict(cfg))
    if diffs:
        raise ConfigError(f"{run_dir} holds a run of another config ({'; '.join(diffs)}); use another output_root "
                          f"or resume=false to start it over")
    return ckpt


def summarize(exp: Experiment, records, reason, elapsed, run_dir: Path, last_stats) -> dict:
    """Go back to the kept round, collapse it (verified), and describe the run."""
    cfg = exp.cfg
    kept = kept_round(records, cfg.stop.max_drop)
    stats = last_stats
    if kept != records[-1]["round"]:
        exp.model = exp.load_round(load_checkpoint(checkpoint_path(run_dir, kept)), kept)
        stats = exp.probe()
    example = exp.verify_batch()[:1]  # one real image: costs are per input
    cost = {"dense": cost_report(exp.new_model(), example)}
    section = None
    if cfg.collapse.enabled:  # collapse costs the kept model itself ("before") on the same image
        _, section = exp.collapse_and_measure(stats, run_dir)
        cost.update(final=section["before"], collapsed=section["after"])
    else:
        cost["final"] = cost_report(exp.model, example)
    keep = ("round", "sparsity", "val_acc", "test_acc", "k", "N", "entropy", "zero_entropy_units")
    final = records[kept]
    summary = {
        "status": "complete", "stop_reason": reason, "rounds_completed": records[-1]["round"], "final_round": kept,
        "dense": {k: records[0][k] for k in keep}, "final": {k: final[k] for k in keep},
        "k": final["k"], "N": final["N"], "depth": f"{final['k']}/{final['N']}",
        "zero_entropy_units": final["zero_entropy_units"], "cost": cost,
        "config_hash": config_hash(cfg), "device": str(exp.device), "wall_time_s": elapsed,
        "versions": {"nepenthe": nepenthe.__version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
    }
    if section is not None:
        summary["collapse"] = section
    return summary


def print_summary(summary: dict) -> None:
    d, f = summary["dense"], summary["final"]
    print(f"stopped: {summary['stop_reason']}; kept round {summary['final_round']} of "
          f"{summary['rounds_completed']}: sparsity {100 * f['sparsity']:.1f}%, test top-1 {f['test_acc']:.2f}% "
          f"(dense {d['test_acc']:.2f}%), zero-entropy units {summary['depth']}")
    if "cost" in summary:  # summaries written before cost accounting existed lack it
        dense, final = summary["cost"]["dense"], summary["cost"]["final"]
        print(f"MACs per input: {dense['macs'] / 1e6:.2f} M dense, {final['macs_nonzero'] / 1e6:.2f} M at non-zero "
              f"weights; weight layers on the longest path: {final['weight_layers_on_longest_path']}")
    if "collapse" in summary:
        for line in format_collapse(summary["collapse"], f["test_acc"]):
            print(line)


def execute(cfg: RunConfig, run_dir: str | Path, config_yaml: str) -> dict:
    """Run (or resume) one experiment into ``run_dir`` and return its summary."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    exp = Experiment(cfg)  # every input error surfaces here, before any record is written
    ckpt = resume_point(cfg, run_dir)
    done = read_summary(run_dir)
    if ckpt is not None and done is not None:
        print(f"{run_dir} is complete; delete it or pass resume=false to run again")
        print_summary(done)
        return done
    wandb_settings = None
    if cfg.logger.name == "wandb":
        wandb_settings = {
            "mode": cfg.logger.mode, "project": cfg.logger.project, "entity": cfg.logger.entity,
            "group": cfg.logger.group, "tags": cfg.logger.tags,
            "id": hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16],
            "init_timeout": cfg.logger.init_timeout,
        }
    recorder = RunRecorder(run_dir, wandb_settings=wandb_settings, config=semantic_dict(cfg))
    recorder.write_config(config_yaml)
    recorder.start()  # W&B trouble shows now, before training, and never stops the run
    names = [u.name for u in exp.units]
    print(format_table_header(names))

    if ckpt is None:
        recorder.restore_rounds([])
        tick = time.perf_counter()
        fitted = exp.fit(0)
        stats = exp.probe()
        scores = exp.assess()
        records, offset = [], 0.0
        records.append(exp.record(0, stats, PruningPlan(), fitted, scores, time.perf_counter() - tick,
                                  time.perf_counter() - started))
        save_checkpoint(run_dir, 0, exp.model, {"records": records, "config": semantic_dict(cfg)})
        recorder.round(records[-1])
        print(format_round_row(records[-1], names))
    else:
        exp.model = exp.load_round(ckpt, ckpt["records"][-1]["round"])
        records, offset = ckpt["records"], ckpt["records"][-1]["elapsed_s"]
        recorder.restore_rounds(records)
        for r in records:
            print(format_round_row(r, names))
        print(f"resumed after round {records[-1]['round']} from {run_dir / 'checkpoints'}")
        stats = exp.probe()

    while True:
        plan = exp.method.plan(exp.model, exp.units, stats) if records[-1]["round"] < cfg.stop.max_rounds else None
        reason = stop_reason(cfg, records, plan)
        if reason is not None:
            break
        r = records[-1]["round"] + 1
        tick = time.perf_counter()
        apply_plan(exp.model, plan)
        fitted = exp.fit(r)
        stats = exp.probe()
        scores = exp.assess()
        wall = time.perf_counter() - tick
        records.append(exp.record(r, stats, plan, fitted, scores, wall, offset + time.perf_counter() - started))
        save_checkpoint(run_dir, r, exp.model, {"records": records, "config": semantic_dict(cfg)})
        recorder.round(records[-1])
        print(format_round_row(records[-1], names))

    summary = summarize(exp, records, reason, offset + time.perf_counter() - started, run_dir, stats)
    recorder.summary(summary)
    print_summary(summary)
    return summary


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        execute(to_run_config(cfg), run_dir, OmegaConf.to_yaml(cfg, resolve=True))
    except NepentheError as exc:
        if not (run_dir / CONFIG_FILE).exists():  # refused before writing a record: only what we created goes
            remove_unused_run_dir(run_dir, Preexisting.from_env())
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to resume from the last completed round in "
              f"{run_dir / CHECKPOINT_DIR}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
