"""The round loop and its stop rule (docs/DESIGN.md steps 7-8), in three stages a caller can see:

    loop = RoundLoop(steps, stop, store=..., recorder=..., reporter=..., identity=...)
    loop.dense()    # round 0: train the dense model, probe, record, checkpoint (or resume after the last checkpoint)
    loop.rounds()   # plan → apply → fine-tune → probe → record → checkpoint, until the stop rule fires
    loop.keep()     # back to the last round within max_drop of dense: a LoopResult

:func:`run_rounds` runs all three. The loop works over any object with the :class:`Steps` methods:
:class:`~nepenthe.experiment.Experiment` builds them from a config, :class:`~nepenthe.api.ModelSteps` from a model and
functions of your own. Checkpoints go to a :mod:`~nepenthe.store` store; what the loop says goes through one
:class:`Reporter` (silent here; :class:`nepenthe.report.ConsoleReporter` prints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from . import interrupt
from .config import StopConfig
from .distributed import Collective
from .entropy import LayerStats
from .errors import NepentheError
from .metrics import weight_layers_on_longest_path
from .pruning.masks import overall_sparsity
from .pruning.methods import Method, PruningPlan, apply_plan
from .records import RoundRecord, RunEstimate
from .store import Checkpoint, EpochCheckpoints, MemoryStore, Store, check_same_run, compact_state
from .tracking import RunRecorder
from .units import Unit, find_module, weight_layer_names

METHOD_TERM, DISTILL_TERM = "method", "distill"  # the names of the loss terms a round's fit reports (train_terms)


class Steps(Protocol):
    """What the loop needs from a run: the model (reassigned when a round is reloaded), its units, the method."""

    model: nn.Module
    units: list[Unit]
    method: Method
    collective: Collective  # the processes running this loop together (distributed.SINGLE: one)

    # train_acc, train_loss, epochs; optional: train_ce_loss, train_terms {METHOD_TERM: ..., DISTILL_TERM: ...}
    def fit(self, round_index: int, checkpoints: EpochCheckpoints) -> dict: ...

    def probe(self, model: nn.Module | None = None) -> dict[str, LayerStats]: ...

    def assess(self, model: nn.Module | None = None) -> dict: ...  # val_acc (required), test_acc, losses

    def method_stats(self, model: nn.Module | None = None) -> dict: ...  # what the method measures to plan

    def load_round(self, ckpt: Checkpoint) -> nn.Module: ...


class Reporter:
    """Where the loop says what happens. This one is silent; :class:`nepenthe.report.ConsoleReporter` prints."""

    def banner(self, lines: list[str]) -> None: ...  # what is about to run (run_experiment)

    def started(self, unit_names: list[str]) -> None: ...

    def estimate(self, estimate: RunEstimate) -> None: ...  # the run's wall time foreseen (nepenthe/estimate.py)

    def resumed(self, records: list[RoundRecord], where: str) -> None: ...

    def resumed_in_round(self, round_index: int, fit_state: dict, where: str) -> None: ...

    def round(self, record: RoundRecord) -> None: ...

    def warning(self, message: str) -> None: ...

    def finished(self, summary) -> None: ...

    def already_complete(self, run_dir, summary) -> None: ...


@dataclass
class LoopResult:
    records: list[RoundRecord]  # one per round
    stop_reason: str
    kept_round: int  # the last round within max_drop of dense
    model: nn.Module  # the kept round's model (masks attached)
    stats: dict[str, LayerStats]  # the kept model's entropy probe
    elapsed_s: float

    @property
    def kept(self) -> RoundRecord:
        return self.records[self.kept_round]


def stop_reason(stop: StopConfig, records: list[RoundRecord], plan: PruningPlan | None) -> str | None:
    last, dense = records[-1], records[0]
    if last.val_acc < dense.val_acc - stop.max_drop and not stop.continue_past_drop:
        return "accuracy_drop"
    if stop.target_zero_units is not None and last.k >= stop.target_zero_units:
        return "target_zero_units"
    if last.round >= stop.max_rounds:
        return "max_rounds"
    if plan is not None and plan.is_empty:
        return "nothing_to_prune"
    return None


def kept_round(records: list[RoundRecord], max_drop: float) -> int:
    """The last round whose validation accuracy is within ``max_drop`` points of dense (round 0 always is)."""
    floor = records[0].val_acc - max_drop
    return max(r.round for r in records if r.val_acc >= floor)


def structural_depth(model: nn.Module) -> int | None:
    """Weight layers on the longest path, or None for a model torch.fx cannot trace (the record says so)."""
    try:
        return weight_layers_on_longest_path(model)
    except NepentheError:
        return None


def round_record(steps: Steps, round_index: int, stats: dict[str, LayerStats], plan: PruningPlan, replaced: list[str],
                 fitted: dict, scores: dict, method_stats: dict, wall: float, elapsed: float) -> RoundRecord:
    model, units = steps.model, steps.units
    zero = [u.name for u in units if stats[u.name].is_zero_entropy]
    known = {"val_acc", "test_acc", "val_loss", "test_loss"}
    return RoundRecord(
        round=round_index, method=steps.method.name, ratio=steps.method.ratio,
        pruned=plan.total, plan={k: v for k, v in plan.counts.items() if v}, frozen_units=plan.frozen_units,
        sparsity=overall_sparsity(model, weight_layer_names(model)),
        unit_sparsity={u.name: overall_sparsity(model, present) for u in units
                       if (present := [w for w in u.weights if find_module(model, w) is not None])},
        entropy={u.name: stats[u.name].entropy for u in units},
        neurons={u.name: stats[u.name].neuron_counts() for u in units},
        zero_entropy_units=zero, k=len(zero), N=len(units),
        replaced_by_identity=replaced, weight_layers=structural_depth(model),
        val_acc=scores["val_acc"], test_acc=scores.get("test_acc"), val_loss=scores.get("val_loss"),
        test_loss=scores.get("test_loss"), extra_scores={k: v for k, v in scores.items() if k not in known},
        train_acc=fitted.get("train_acc"), train_loss=fitted.get("train_loss"),
        train_ce_loss=fitted.get("train_ce_loss"), train_reg_loss=fitted.get("train_terms", {}).get(METHOD_TERM),
        train_distill_loss=fitted.get("train_terms", {}).get(DISTILL_TERM), epochs=fitted.get("epochs"),
        method_stats=method_stats, wall_time_s=wall, elapsed_s=elapsed, processes=steps.collective.world,
    )


class RoundLoop:
    """One run's rounds over ``steps``: :meth:`dense`, then :meth:`rounds`, then :meth:`keep`. With a
    :class:`~nepenthe.store.DirStore` a run killed at any point resumes after its last completed round (or epoch)
    and reproduces the uninterrupted run's records; ``identity`` (e.g. the semantic config) must match to resume."""

    def __init__(self, steps: Steps, stop: StopConfig, *, store: Store | None = None,
                 recorder: RunRecorder | None = None, reporter: Reporter | None = None, identity: dict | None = None):
        self.steps = steps
        self.stop = steps.method.stop_rule(stop, steps.model)  # a method may stop on its own terms (LaCoOT)
        self.store = store if store is not None else MemoryStore()
        self.recorder, self.reporter = recorder, reporter or Reporter()
        self.identity = identity or {}
        self.records: list[RoundRecord] = []
        self.stats: dict[str, LayerStats] = {}
        self.reason: str | None = None
        self._started, self._offset = time.perf_counter(), 0.0

    def _elapsed(self) -> float:
        return self._offset + time.perf_counter() - self._started

    def _fit(self, round_index: int) -> dict:
        def restored(r, fit_state, where):
            self.reporter.resumed_in_round(r, fit_state, where)

        checkpoints = self.store.epoch_checkpoints(round_index, self.identity, on_restore=restored)
        return self.steps.fit(round_index, checkpoints)

    def _finish_round(self, round_index: int, plan: PruningPlan, tick: float, fitted: dict) -> None:
        steps = self.steps
        replaced = (self.records[-1].replaced_by_identity if self.records else []) + plan.identities
        self.stats = steps.probe()
        record = round_record(steps, round_index, self.stats, plan, replaced, fitted, steps.assess(),
                              steps.method_stats(), time.perf_counter() - tick, self._elapsed())
        self.records.append(record)
        self.store.save(round_index, steps.model, self.records, self.identity)
        if self.recorder is not None:
            self.recorder.round(record)
        self.reporter.round(record)
        signum = interrupt.requested()  # asked to go while probing or evaluating: the round is saved, stop here
        if signum is not None:
            interrupt.clear()
            raise interrupt.StopRequested(signum, f"after round {round_index}")

    def dense(self, resume: bool = True) -> list[RoundRecord]:
        """Round 0 (the dense model), or everything the latest checkpoint holds when there is one to resume."""
        ckpt = self.store.latest() if resume else None
        check_same_run(ckpt.config if ckpt else None, self.identity, self.store)
        self.reporter.started([u.name for u in self.steps.units])
        if ckpt is None:
            if self.recorder is not None:
                self.recorder.restore_rounds([])
            tick = time.perf_counter()
            self._finish_round(0, PruningPlan(), tick, self._fit(0))
            return self.records
        self.steps.model = self.steps.load_round(ckpt)
        self.records, self._offset = list(ckpt.records), ckpt.records[-1].elapsed_s
        if self.recorder is not None:
            self.recorder.restore_rounds(self.records)  # also repairs a cut-off last line
        self.reporter.resumed(self.records, str(self.store))
        self.stats = self.steps.probe()
        return self.records

    def rounds(self) -> str:
        """Prune and fine-tune round by round until the stop rule fires; returns why it stopped."""
        steps = self.steps
        while True:
            last = self.records[-1].round
            plan = None
            if last < self.stop.max_rounds:  # computed once (process 0 of a distributed run) and sent to every one
                plan = steps.collective.outcome(steps.method.plan, steps.model, steps.units, self.stats, self.records)
            self.reason = stop_reason(self.stop, self.records, plan)
            if self.reason is not None:
                return self.reason
            assert plan is not None  # stop_reason stops a loop with no plan (max_rounds reached)
            tick = time.perf_counter()
            apply_plan(steps.model, plan)
            steps.collective.check_same(f"the masks of round {last + 1}", compact_state(steps.model)[1])
            self._finish_round(last + 1, plan, tick, self._fit(last + 1))

    def keep(self) -> LoopResult:
        """Reload the last round within max_drop of dense (when a later one was trained) and return the result."""
        kept = kept_round(self.records, self.stop.max_drop)
        if kept != self.records[-1].round:
            self.steps.model = self.steps.load_round(self.store.load(kept))
            self.stats = self.steps.probe()
        return LoopResult(self.records, self.reason or "", kept, self.steps.model, self.stats, self._elapsed())


def run_rounds(steps: Steps, stop: StopConfig, *, store: Store | None = None, recorder: RunRecorder | None = None,
               reporter: Reporter | None = None, identity: dict | None = None, resume: bool = True) -> LoopResult:
    """Train dense (round 0), then prune and fine-tune round by round until the stop rule fires; return the kept
    round's model and probe (:class:`RoundLoop`'s three stages in one call)."""
    loop = RoundLoop(steps, stop, store=store, recorder=recorder, reporter=reporter, identity=identity)
    loop.dense(resume)
    loop.rounds()
    return loop.keep()


