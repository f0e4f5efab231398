"""One configured run, end to end, as the stages it is made of. ``train.py`` is a Hydra shim over
:func:`run_experiment`; a notebook can call it with a config built in Python.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

import torch
import torchvision

from . import __version__, distributed
from .config import HardwareConfig, RunConfig, config_hash, load_run_config, semantic_dict
from .deploy import collapse_kept, measure_collapsed
from .distributed import Collective
from .errors import NepentheError
from .experiment import Experiment
from .loop import LoopResult, Reporter, RoundLoop
from .metrics import cost_report
from .records import CollapseResult, Costs, RoundBrief, Summary, TrajectoryPoint
from .report import describe_run
from .rundir import RunDir
from .runlock import RunLock
from .store import DirStore, FollowerStore, check_same_run, load_in_round
from .tracking import RunRecorder, read_summary


def run_experiment(cfg: RunConfig, run_dir: str | Path, config_yaml: str | None = None,
                   reporter: Reporter | None = None) -> Summary | None:
    """Run (or resume) one experiment into ``run_dir`` and return its summary (also written to summary.json).
    Every input error is raised (a :class:`~nepenthe.errors.NepentheError`) before any record is written, and a
    directory that holds a run of another config is refused without a byte written into it. In a distributed run
    (torchrun, srun) every process runs these same stages in lockstep: process 0 writes (records, checkpoints,
    collapse) and returns the summary, the others read its checkpoints and return None."""
    run_dir = Path(run_dir)
    collective = configure_process(cfg.hardware)  # the one place a run changes process-wide settings
    main = collective.is_main
    reporter = (reporter or Reporter()) if main else Reporter()  # one process prints
    exp = Experiment(cfg, collective)  # data, model, units, method: nothing trained yet
    identity = semantic_dict(cfg)
    with RunLock(run_dir) if main else contextlib.nullcontext():  # one writer per run directory
        store = DirStore(run_dir) if main else FollowerStore(run_dir)
        exp.dense_checkpoint = lambda: store.load(0)  # the distillation teacher (finetune.distill)
        # process 0 prepares the directory (or refuses it: raised on every process)
        done = collective.outcome(previous_run, cfg, run_dir, store, identity)
        if done is not None:
            reporter.already_complete(run_dir, done)
            return done if main else None
        reporter.banner(describe_run(exp, run_dir))
        recorder = open_records(cfg, run_dir, config_yaml, reporter, collective) if main else None

        exp.on_estimate = reporter.estimate  # said after the first training steps of this attempt
        loop = RoundLoop(exp, cfg.stop, store=store, recorder=recorder, reporter=reporter, identity=identity)
        with _peers_watched(run_dir, collective):
            loop.dense(resume=cfg.resume)  # round 0: train the dense model, probe, record (or resume)
            loop.rounds()  # plan → prune → fine-tune → probe → record → checkpoint, until the stop rule
            kept = loop.keep()  # back to the last round within max_drop of dense
        distributed.finish()  # the other processes are done: collapse and measure on process 0 alone
        if not main:
            return None
        assert recorder is not None  # process 0 opened the records
        exp.collective = distributed.SINGLE
        collapsed = None
        if cfg.collapse.enabled:
            started = time.perf_counter()
            deployment = exp.deployment()  # the kept model, the verification images, the collapse settings
            small, report = collapse_kept(deployment, kept.stats)  # exact collapse, each step verified
            # accuracy, latency per runtime, the shipped files
            collapsed = measure_collapsed(deployment, small, report, run_dir, warn=reporter.warning)
            collapsed.wall_time_s = time.perf_counter() - started
        summary = summarize(exp, kept, collapsed, collective)

        recorder.summary(summary)
        reporter.finished(summary)
        return summary


def configure_process(hardware: HardwareConfig) -> Collective:
    """Process-wide settings a run asks for: the CPU thread count (None keeps torch's default), and the process group
    when a distributed launch (torchrun, srun) started this process; returns this process's collective."""
    if hardware.threads:
        torch.set_num_threads(hardware.threads)
    return distributed.join(hardware.device)


@contextlib.contextmanager
def _peers_watched(run_dir: Path, collective: Collective):
    """A collective that fails because another process of the run died becomes one line saying so."""
    try:
        yield
    except RuntimeError as exc:
        failure = collective.peer_failure(exc, RunDir(run_dir).checkpoints)
        if failure is None:
            raise
        raise failure from exc


def previous_run(cfg: RunConfig, run_dir: Path, store: DirStore, identity: dict) -> Summary | None:
    """What ``run_dir`` already holds. A run of another config (its config.yaml or any checkpoint says so) is
    refused before anything is written; a finished run of this config returns its summary; ``resume=false`` clears
    the previous run's outputs; a failure recorded by an earlier attempt is cleared for this one."""
    if not cfg.resume:
        RunDir(run_dir).clear()
    else:
        for where, saved in identities_on_disk(run_dir, store):
            check_same_run(saved, identity, where)
        done = read_summary(run_dir)
        if done is not None and store.latest() is not None:
            return done
    RunDir(run_dir).clear_failure()
    return None


def identities_on_disk(run_dir: Path, store: DirStore) -> list[tuple[str, dict]]:
    """The semantic configs that ``run_dir``'s config.yaml and checkpoints were written with."""
    found = []
    config = RunDir(run_dir).config
    if config.is_file():
        try:
            found.append((str(config), semantic_dict(load_run_config(config))))
        except NepentheError:
            pass  # an unreadable or outdated config.yaml: the checkpoints below still tell
    latest = store.latest()
    if latest is not None:
        found.append((str(run_dir), latest.config))
    in_round = load_in_round(run_dir)
    if in_round is not None:
        found.append((str(run_dir), in_round["config"]))
    return found


def open_records(cfg: RunConfig, run_dir: Path, config_yaml: str | None, reporter: Reporter,
                 collective: Collective) -> RunRecorder:
    """config.yaml written (headed by how many processes run it), W&B started (its trouble shows now, before
    training, and never stops the run)."""
    recorder = RunRecorder(run_dir, wandb_settings=wandb_settings(cfg, run_dir), config=semantic_dict(cfg))
    if config_yaml is None:
        from omegaconf import OmegaConf  # a dependency of the library's config typing, not Hydra

        config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    recorder.write_config(f"# run on {collective.describe()}\n{config_yaml}")
    recorder.start()
    if recorder.warning:
        reporter.warning(recorder.warning)
    return recorder


def wandb_settings(cfg: RunConfig, run_dir: Path) -> dict | None:
    if cfg.logger.name != "wandb":
        return None
    log = cfg.logger
    return {"mode": log.mode, "project": log.project, "entity": log.entity, "group": log.group, "tags": log.tags,
            "init_timeout": log.init_timeout,
            "id": hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]}  # stable across resumes


def summarize(exp: Experiment, kept: LoopResult, collapsed: CollapseResult | None,
              collective: Collective) -> Summary:
    """The run in one record (nepenthe/records.py): kept round, costs, collapse, every round in brief."""
    records, kept_record = kept.records, kept.kept
    example = exp.verify_batch()[:1]  # one real image: costs are per input
    cost = Costs(dense=cost_report(exp.new_model(), example))
    if collapsed is not None:  # collapse costed the kept model itself ("before") on the same image
        cost.kept, cost.collapsed = collapsed.before, collapsed.after
    else:
        cost.kept = cost_report(exp.model, example)
    return Summary(
        status="complete", stop_reason=kept.stop_reason, rounds_completed=records[-1].round,
        kept_round=kept.kept_round, dense=RoundBrief.of(records[0]), kept=RoundBrief.of(kept_record),
        k=kept_record.k, N=kept_record.N, depth=f"{kept_record.k}/{kept_record.N}",
        zero_entropy_units=kept_record.zero_entropy_units, cost=cost,
        trajectory={str(r.round): TrajectoryPoint.of(r) for r in records}, collapse=collapsed,
        config_hash=config_hash(exp.cfg), device=str(exp.device), wall_time_s=kept.elapsed_s,
        processes=collective.world, backend=collective.backend, estimate=exp.estimate,
        versions={"nepenthe": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__})
