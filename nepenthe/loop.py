"""The round loop (docs/DESIGN.md, "Data flow of one run"): probe → plan → prune → fine-tune → evaluate → record →
checkpoint → stop?, then go back to the last round within ``max_drop`` of dense.

The loop runs over any object with the :class:`Steps` methods: :class:`~nepenthe.experiment.Experiment` builds them
from a :class:`~nepenthe.config.RunConfig` (``train.py``, :func:`nepenthe.runner.run_experiment`), and
:class:`ModelSteps` from a model, loaders and functions of your own (:func:`prune`). What it reports goes through one
:class:`Reporter`; the library's default says nothing, the CLI's prints.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import torch
from torch import nn

from .checkpoint import (checkpoint_path, compact_state, in_round_path, latest_checkpoint, load_checkpoint,
                         load_compact_state, load_in_round, remove_in_round, remove_stale_temp_files, save_checkpoint,
                         save_in_round)
from .config import StopConfig, config_diff
from .entropy import LayerStats, measure_entropy
from .errors import ConfigError
from .pruning.masks import overall_sparsity
from .pruning.methods import Method, PruningPlan, apply_plan, create_method, linearize, linearized_units
from .tracking import RunRecorder, clear_run_outputs
from .units import Unit, activation_modules, unit_layouts, weight_layer_names


class Steps(Protocol):
    """What the loop needs from a run: the model (reassigned when a round is reloaded), its units, the method."""

    model: nn.Module
    units: list[Unit]
    method: Method

    def fit(self, round_index: int) -> dict: ...  # train_acc, train_loss, epochs (round 0: dense training)
    # optionally fit(round_index, checkpoints=EpochCheckpoints): save after every epoch and resume mid-round

    def probe(self, model: nn.Module | None = None) -> dict[str, LayerStats]: ...

    def assess(self, model: nn.Module | None = None) -> dict: ...  # val_acc (required), test_acc, losses

    def load_round(self, ckpt: dict, round_index: int) -> nn.Module: ...


class Reporter:
    """Where the loop says what happens. This one is silent; :class:`nepenthe.report.ConsoleReporter` prints."""

    def banner(self, lines: list[str]) -> None: ...  # what is about to run (run_experiment)

    def started(self, unit_names: list[str]) -> None: ...

    def resumed(self, records: list[dict], where: str) -> None: ...

    def resumed_in_round(self, round_index: int, epoch: int, epochs: int, where: str) -> None: ...

    def round(self, record: dict) -> None: ...

    def warning(self, message: str) -> None: ...

    def finished(self, summary: dict) -> None: ...

    def already_complete(self, run_dir: Path, summary: dict) -> None: ...


@dataclass
class LoopResult:
    records: list[dict]  # one per round, the fields documented in nepenthe/tracking.py
    stop_reason: str
    kept_round: int  # the last round within max_drop of dense
    model: nn.Module  # the kept round's model (masks attached)
    stats: dict[str, LayerStats]  # the kept model's entropy probe
    elapsed_s: float

    @property
    def kept(self) -> dict:
        return self.records[self.kept_round]


def stop_reason(stop: StopConfig, records: list[dict], plan: PruningPlan | None) -> str | None:
    last, dense = records[-1], records[0]
    if last["val_acc"] < dense["val_acc"] - stop.max_drop:
        return "accuracy_drop"
    if stop.target_zero_units is not None and last["k"] >= stop.target_zero_units:
        return "target_zero_units"
    if last["round"] >= stop.max_rounds:
        return "max_rounds"
    if plan is not None and plan.is_empty:
        return "nothing_to_prune"
    return None


def kept_round(records: list[dict], max_drop: float) -> int:
    """The last round whose validation accuracy is within ``max_drop`` points of dense (round 0 always is)."""
    floor = records[0]["val_acc"] - max_drop
    return max(r["round"] for r in records if r["val_acc"] >= floor)


def check_same_run(ckpt: dict | None, identity: dict, where) -> None:
    """Refuse to resume a checkpoint that was written by a run of another config."""
    diffs = config_diff(ckpt.get("config", {}), identity) if ckpt is not None else []
    if diffs:
        raise ConfigError(f"{where} holds a run of another config ({'; '.join(diffs)}); use another output_root "
                          f"or resume=false to start it over")


def round_record(steps: Steps, round_index: int, stats, plan: PruningPlan, fitted: dict, scores: dict, wall: float,
                 elapsed: float) -> dict:
    model, units = steps.model, steps.units
    zero = [u.name for u in units if stats[u.name].is_zero_entropy]
    return {
        "round": round_index, "method": steps.method.name, "ratio": steps.method.ratio,
        "pruned": plan.total, "plan": {k: v for k, v in plan.counts.items() if v}, "frozen_units": plan.frozen_units,
        "sparsity": overall_sparsity(model, weight_layer_names(model)),
        "unit_sparsity": {u.name: overall_sparsity(model, list(u.weights)) for u in units},
        "entropy": {u.name: stats[u.name].entropy for u in units},
        "neurons": {u.name: stats[u.name].neuron_counts() for u in units},
        "zero_entropy_units": zero, "k": len(zero), "N": len(units),
        "linearized": linearized_units(model, units),
        **scores, "train_acc": fitted.get("train_acc"), "train_loss": fitted.get("train_loss"),
        "epochs": fitted.get("epochs"), "wall_time_s": wall, "elapsed_s": elapsed,
    }


class DirStore:
    """Checkpoints in ``run_dir/checkpoints`` (atomic, hashed): a killed run resumes from its last round, and from its
    last epoch inside the round in progress (:class:`EpochCheckpoints`)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def save(self, round_index: int, model: nn.Module, payload: dict) -> None:
        save_checkpoint(self.run_dir, round_index, model, payload)
        remove_in_round(self.run_dir)  # the round is complete: its epoch checkpoint is no longer needed

    def load(self, round_index: int) -> dict:
        return load_checkpoint(checkpoint_path(self.run_dir, round_index))

    def latest(self) -> dict | None:
        remove_stale_temp_files(self.run_dir)
        path = latest_checkpoint(self.run_dir)
        return None if path is None else load_checkpoint(path)


class EpochCheckpoints:
    """The epoch checkpoints of one round: :meth:`save` after every epoch (``fit``'s ``on_epoch_end``), and
    :meth:`restore` when the run was killed inside this round: it loads the model's state and returns the fit state
    to continue from, so the round ends exactly as an uninterrupted one would."""

    def __init__(self, run_dir: Path, round_index: int, identity: dict, reporter: Reporter):
        self.run_dir, self.round_index, self.identity, self.reporter = run_dir, round_index, identity, reporter

    def save(self, model: nn.Module, fit_state: dict) -> None:
        save_in_round(self.run_dir, self.round_index, model, fit_state, self.identity)

    def restore(self, model: nn.Module) -> dict | None:
        saved = load_in_round(self.run_dir)
        if saved is None or saved["round"] != self.round_index:
            return None  # none, or left over from a round that completed
        check_same_run(saved, self.identity, in_round_path(self.run_dir))
        model.load_state_dict(saved["model"])
        fit_state = saved["fit"]
        self.reporter.resumed_in_round(self.round_index, fit_state["epoch"], fit_state["epochs"],
                                       str(in_round_path(self.run_dir)))
        return fit_state


def takes_checkpoints(steps: Steps) -> bool:
    return "checkpoints" in inspect.signature(steps.fit).parameters


class MemoryStore:
    """Checkpoints kept in memory for a run without a directory; the last two rounds are all the kept round needs
    (the loop stops at the first round that falls below ``max_drop``)."""

    def __init__(self):
        self.saved: dict[int, dict] = {}

    def save(self, round_index: int, model: nn.Module, payload: dict) -> None:
        state, masks = compact_state(model)
        self.saved[round_index] = {"round": round_index, "state": {k: v.detach().clone() for k, v in state.items()},
                                   "masks": {k: v.clone() for k, v in masks.items()}, **copy.deepcopy(payload)}
        for old in sorted(self.saved)[:-2]:
            del self.saved[old]

    def load(self, round_index: int) -> dict:
        return self.saved[round_index]

    def latest(self) -> dict | None:
        return None


def run_rounds(steps: Steps, stop: StopConfig, *, store=None, recorder: RunRecorder | None = None,
               reporter: Reporter | None = None, identity: dict | None = None, resume: bool = True) -> LoopResult:
    """Train dense (round 0), then prune and fine-tune round by round until the stop rule fires; return the kept
    round's model and probe. With a :class:`DirStore`, a run killed at any point resumes after its last completed
    round and reproduces the uninterrupted run's records; ``identity`` (e.g. the config) must match to resume."""
    store = store if store is not None else MemoryStore()
    reporter = reporter or Reporter()
    identity = identity or {}
    started = time.perf_counter()
    names = [u.name for u in steps.units]
    ckpt = store.latest() if resume else None
    check_same_run(ckpt, identity, getattr(store, "run_dir", "this store"))
    reporter.started(names)

    def fit_round(r: int) -> dict:
        if isinstance(store, DirStore) and takes_checkpoints(steps):
            return steps.fit(r, checkpoints=EpochCheckpoints(store.run_dir, r, identity, reporter))
        return steps.fit(r)

    def finish_round(r: int, plan: PruningPlan, tick: float, fitted: dict) -> dict:
        stats = steps.probe()
        scores = steps.assess()
        record = round_record(steps, r, stats, plan, fitted, scores, time.perf_counter() - tick,
                              offset + time.perf_counter() - started)
        records.append(record)
        store.save(r, steps.model, {"records": records, "config": identity})
        if recorder is not None:
            recorder.round(record)
        reporter.round(record)
        return stats

    if ckpt is None:
        records, offset = [], 0.0
        if recorder is not None:
            recorder.restore_rounds([])
        tick = time.perf_counter()
        stats = finish_round(0, PruningPlan(), tick, fit_round(0))
    else:
        steps.model = steps.load_round(ckpt, ckpt["records"][-1]["round"])
        records, offset = list(ckpt["records"]), ckpt["records"][-1]["elapsed_s"]
        if recorder is not None:
            recorder.restore_rounds(records)  # also repairs a cut-off last line
        reporter.resumed(records, str(getattr(store, "run_dir", "")))
        stats = steps.probe()

    while True:
        last = records[-1]["round"]
        plan = steps.method.plan(steps.model, steps.units, stats) if last < stop.max_rounds else None
        reason = stop_reason(stop, records, plan)
        if reason is not None:
            break
        tick = time.perf_counter()
        apply_plan(steps.model, plan)
        stats = finish_round(last + 1, plan, tick, fit_round(last + 1))

    kept = kept_round(records, stop.max_drop)
    if kept != records[-1]["round"]:
        steps.model = steps.load_round(store.load(kept), kept)
        stats = steps.probe()
    return LoopResult(records, reason, kept, steps.model, stats, offset + time.perf_counter() - started)


def probe_units(model: nn.Module, units: list[Unit], batches: Iterable, **options) -> dict[str, LayerStats]:
    """Entropy of every unit; a unit already replaced by an identity (EASIER) is not hooked and counts as a
    zero-entropy unit with all neurons ON. ``options`` go to :func:`~nepenthe.entropy.measure_entropy`."""
    gone = set(linearized_units(model, units))
    live = [u for u in units if u.name not in gone]
    stats = measure_entropy(model, activation_modules(model, live), batches, layouts=unit_layouts(live), **options)
    for name in gone:
        stats[name] = LayerStats(name, torch.ones(0, dtype=torch.float64), 0.0, 0)
    return {u.name: stats[u.name] for u in units}


class ModelSteps:
    """The loop's steps for a model, loaders and functions of your own (see :func:`prune`)."""

    def __init__(self, model, units, method, *, train, evaluate, probe_batches, train_dense=False, device=None,
                 entropy_options: Mapping | None = None):
        self.template = copy.deepcopy(model)  # the architecture to reload rounds into (before any mask)
        self.model, self.units, self.method = model, units, method
        self.train, self.evaluate, self.probe_batches = train, evaluate, probe_batches
        self.train_dense = train_dense
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.entropy_options = dict(entropy_options or {})

    def fit(self, round_index: int) -> dict:
        if round_index == 0 and not self.train_dense:
            return {}
        result = self.train(self.model, round_index)
        return dict(result) if isinstance(result, Mapping) else {}

    def probe(self, model=None):
        return probe_units(model if model is not None else self.model, self.units, self.probe_batches,
                           device=self.device, **self.entropy_options)

    def assess(self, model=None) -> dict:
        result = self.evaluate(model if model is not None else self.model)
        scores = dict(result) if isinstance(result, Mapping) else {"val_acc": float(result)}
        if "val_acc" not in scores:
            raise ConfigError(f"evaluate() must return the validation top-1 in % (a number) or a dict with "
                              f"'val_acc'; got keys {sorted(scores)}")
        return scores

    def load_round(self, ckpt: dict, round_index: int) -> nn.Module:
        model = load_compact_state(copy.deepcopy(self.template), ckpt["state"], ckpt["masks"])
        linearize(model, ckpt["records"][round_index].get("linearized", []))
        return model


def prune(model: nn.Module, *, train: Callable, evaluate: Callable, probe_batches: Iterable,
          method: str | Method = "nepenthe", ratio: float = 0.5, units: list[Unit] | None = None,
          max_rounds: int = 10, max_drop: float = 1.0, target_zero_units: int | None = None,
          train_dense: bool = False, run_dir: str | Path | None = None, resume: bool = True,
          zero_state: str = "off", layer_mean: str = "nonconstant", pooling: str = "dataset",
          device=None, reporter: Reporter | None = None) -> LoopResult:
    """NEPENTHE (or another method) on your own model, with your own training and evaluation.

    ``train(model, round_index)`` fine-tunes in place (round 0 is dense training, called only with
    ``train_dense=True``; may return ``{"train_acc", "train_loss", "epochs"}``); ``evaluate(model)`` returns the
    validation top-1 in % or a dict with ``val_acc`` (and optionally ``test_acc``); ``probe_batches`` is an iterable of
    ``(images, labels)`` or images that the entropy is measured on (training images without augmentation, as the
    reference codes). Units are found on the model (:func:`~nepenthe.discovery.model_units`) unless given. With
    ``run_dir`` every round is checkpointed and recorded there (``rounds.jsonl``) and a re-run resumes.
    Returns the kept round's model, its probe (ready for :func:`~nepenthe.collapse.collapse`) and every record.
    """
    from .discovery import model_units

    units = model_units(model) if units is None else units
    method = create_method(method, ratio) if isinstance(method, str) else method
    steps = ModelSteps(model, units, method, train=train, evaluate=evaluate, probe_batches=probe_batches,
                       train_dense=train_dense, device=device,
                       entropy_options={"zero_state": zero_state, "layer_mean": layer_mean, "pooling": pooling})
    stop = StopConfig(max_drop=max_drop, max_rounds=max_rounds, target_zero_units=target_zero_units)
    identity = {"method": method.name, "ratio": method.ratio, "units": [u.name for u in units]}
    store, recorder = MemoryStore(), None
    if run_dir is not None:
        if not resume:
            clear_run_outputs(run_dir)
        store, recorder = DirStore(run_dir), RunRecorder(run_dir)
    return run_rounds(steps, stop, store=store, recorder=recorder, reporter=reporter, identity=identity,
                      resume=resume)
