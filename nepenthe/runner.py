"""One configured run, end to end: :func:`run_experiment` builds the run from a :class:`~nepenthe.config.RunConfig`,
drives :func:`~nepenthe.loop.run_rounds`, collapses the kept round (verified) and writes the summary. ``train.py``
is a Hydra shim over it; a notebook can call it with a config built in Python.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
import torchvision

from . import __version__
from .config import RunConfig, config_hash, semantic_dict
from .experiment import Experiment
from .loop import DirStore, LoopResult, Reporter, check_same_run, run_rounds
from .metrics import cost_report
from .report import describe_run
from .runlock import RunLock
from .tracking import RunRecorder, clear_failure, clear_run_outputs, read_summary

SUMMARY_KEYS = ("round", "sparsity", "val_acc", "test_acc", "k", "N", "entropy", "zero_entropy_units")
TRAJECTORY_KEYS = ("sparsity", "val_acc", "test_acc", "k", "N")


def run_experiment(cfg: RunConfig, run_dir: str | Path, config_yaml: str | None = None,
                   reporter: Reporter | None = None) -> dict:
    """Run (or resume) one experiment into ``run_dir`` and return its summary (also written to summary.json).
    Every input error is raised (a :class:`~nepenthe.errors.NepentheError`) before any record is written."""
    run_dir = Path(run_dir)
    reporter = reporter or Reporter()
    started = time.perf_counter()
    exp = Experiment(cfg)
    with RunLock(run_dir):  # one writer per run directory; refused at once, naming the holder
        store = DirStore(run_dir)
        clear_failure(run_dir)  # an earlier attempt's failure record; this attempt writes its own if it fails
        if not cfg.resume:
            clear_run_outputs(run_dir)
        done = read_summary(run_dir) if cfg.resume else None
        if done is not None:
            latest = store.latest()
            check_same_run(latest, semantic_dict(cfg), run_dir)
            if latest is not None:
                reporter.already_complete(run_dir, done)
                return done
        reporter.banner(describe_run(exp, run_dir))
        recorder = RunRecorder(run_dir, wandb_settings=wandb_settings(cfg, run_dir), config=semantic_dict(cfg))
        if config_yaml is None:
            from omegaconf import OmegaConf  # a dependency of the library's config typing, not Hydra

            config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
        recorder.write_config(config_yaml)
        recorder.start()  # W&B trouble shows now, before training, and never stops the run
        if recorder.warning:
            reporter.warning(recorder.warning)
        result = run_rounds(exp, cfg.stop, store=store, recorder=recorder, reporter=reporter,
                            identity=semantic_dict(cfg), resume=cfg.resume)
        summary = summarize(exp, result, run_dir, time.perf_counter() - started)
        recorder.summary(summary)
        reporter.finished(summary)
        return summary


def wandb_settings(cfg: RunConfig, run_dir: Path) -> dict | None:
    if cfg.logger.name != "wandb":
        return None
    log = cfg.logger
    return {"mode": log.mode, "project": log.project, "entity": log.entity, "group": log.group, "tags": log.tags,
            "init_timeout": log.init_timeout,
            "id": hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]}  # stable across resumes


def summarize(exp: Experiment, result: LoopResult, run_dir: Path, elapsed: float) -> dict:
    """Collapse the kept round (verified) and describe the run (fields documented in nepenthe/tracking.py)."""
    cfg, records, final = exp.cfg, result.records, result.kept
    example = exp.verify_batch()[:1]  # one real image: costs are per input
    cost = {"dense": cost_report(exp.new_model(), example)}
    section = None
    if cfg.collapse.enabled:  # collapse costs the kept model itself ("before") on the same image
        _, section = exp.collapse_and_measure(result.stats, run_dir)
        cost.update(final=section["before"], collapsed=section["after"])
    else:
        cost["final"] = cost_report(exp.model, example)
    summary = {
        "status": "complete", "stop_reason": result.stop_reason, "rounds_completed": records[-1]["round"],
        "final_round": result.kept_round,
        "dense": {k: records[0][k] for k in SUMMARY_KEYS}, "final": {k: final[k] for k in SUMMARY_KEYS},
        "k": final["k"], "N": final["N"], "depth": f"{final['k']}/{final['N']}",
        "zero_entropy_units": final["zero_entropy_units"], "cost": cost,
        # every round in brief, so that a summary alone (a W&B runs-table export) still holds the trajectory
        "trajectory": {str(r["round"]): {k: r[k] for k in TRAJECTORY_KEYS} for r in records},
        "config_hash": config_hash(cfg), "device": str(exp.device), "wall_time_s": result.elapsed_s,
        "versions": {"nepenthe": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
    }
    if section is not None:
        summary["collapse"] = section
    return summary
