"""NEPENTHE (or any method) on your own model, data and training function: :func:`prune` (docs/own_model.md)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import StopConfig, check_stop
from .entropy import ProbeSettings, probe_units
from .errors import ConfigError
from .inputs import check_percent
from .loop import LoopResult, Reporter, run_rounds
from .pruning.masks import make_permanent
from .pruning.methods import Method
from .pruning.registry import build_method
from .rundir import RunDir
from .store import Checkpoint, DirStore, EpochCheckpoints, MemoryStore, Store, restore_model
from .tracking import RunRecorder
from .units import Unit


class ModelSteps:
    """The loop's steps (:class:`~nepenthe.loop.Steps`) for a model, batches and functions of your own."""

    def __init__(self, model, units, method, *, train, evaluate, probe_batches, setup: PruneSetup,
                 probe: ProbeSettings):
        self.template = copy.deepcopy(model)  # the architecture to reload rounds into (before any mask)
        self.model, self.units, self.method = model, units, method
        self.train, self.evaluate, self.probe_batches = train, evaluate, probe_batches
        self.method_batches = setup.method_batches if setup.method_batches is not None else probe_batches
        self.train_dense = setup.train_dense
        self.device = torch.device(setup.device) if setup.device is not None else next(model.parameters()).device
        self.settings = probe
        self.collective = distributed.current()  # torchrun around your script: the probe sums every process's counts

    def fit(self, round_index: int, checkpoints: EpochCheckpoints) -> dict:
        # your train() owns its epochs: nothing is checkpointed inside a round
        if round_index == 0 and not self.train_dense:
            return {}
        result = self.train(self.model, round_index)
        return dict(result) if isinstance(result, Mapping) else {}

    def probe(self, model=None):
        return probe_units(model if model is not None else self.model, self.units, self.probe_batches, self.settings,
                           device=self.device, collective=self.collective)

    def method_stats(self, model=None) -> dict:
        return self.method.measure(model if model is not None else self.model, self.method_batches, self.device,
                                   self.collective)

    def assess(self, model=None) -> dict:
        result = self.evaluate(model if model is not None else self.model)
        scores = dict(result) if isinstance(result, Mapping) else {"val_acc": result}
        if "val_acc" not in scores:
            raise ConfigError(f"evaluate() must return the validation top-1 in % (a number) or a dict with "
                              f"'val_acc'; got keys {sorted(scores)}")
        scores["val_acc"] = check_percent(scores["val_acc"])
        return scores

    def load_round(self, ckpt: Checkpoint) -> nn.Module:
        return restore_model(copy.deepcopy(self.template), ckpt)


@dataclass
class PruneSetup:
    """Where and how :func:`prune` runs: everything but the model, your functions, the method, its stop rule and its
    probe settings."""

    units: list[Unit] | None = None  # None: found on the model (discovery.model_units)
    train_dense: bool = False  # True: round 0 calls train(model, 0) to train the dense model first
    method_batches: Iterable | None = None  # what a method measures to plan on (LaCoOT: val MSWD); None: the probe's
    run_dir: str | Path | None = None  # every round checkpointed and recorded there, and a re-run resumes
    resume: bool = True  # False: an older run in run_dir is cleared first
    device: Any = None  # None: where the model's parameters are
    reporter: Reporter | None = None  # nepenthe.ConsoleReporter() prints the round table as it grows


def prune(model: nn.Module, *, train: Callable, evaluate: Callable, probe_batches: Iterable,
          method: str | Method = "nepenthe", stop: StopConfig | None = None, probe: ProbeSettings | None = None,
          setup: PruneSetup | None = None) -> LoopResult:
    """NEPENTHE (or another method) on your own model, with your own training and evaluation.

    ``train(model, round_index)`` fine-tunes in place (round 0 is dense training, called only with
    ``setup.train_dense``; may return ``{"train_acc", "train_loss", "epochs"}``); ``evaluate(model)`` returns the
    validation top-1 in % or a dict with ``val_acc`` (and optionally ``test_acc``); ``probe_batches`` is an iterable of
    ``(images, labels)`` or images that the entropy is measured on (training images without augmentation, as the
    reference codes). ``method`` is a name (its papers' settings, ratio 0.5) or a method object
    (``create_method("nepenthe", ratio=0.3)``). ``stop`` is the stop rule (``StopConfig(max_rounds=9, max_drop=1.0)``
    by default: at most 10 rounds, 1 validation point below dense); ``probe`` the entropy settings (default: the
    method's own, ``method.probe``). Returns the kept round's model (its masks made permanent: plain weights holding
    their zeros, no ``weight_orig``/``weight_mask``), its probe (ready for :func:`~nepenthe.collapse.collapse`) and
    every record. A refusal names the argument as passed here (``stop.max_drop=-1``, ``setup.run_dir``).
    """
    from .discovery import model_units

    setup = setup or PruneSetup()
    try:
        stop = check_stop(stop or StopConfig())
        method = build_method(method, 0.5, {}) if isinstance(method, str) else method
        units = model_units(model) if setup.units is None else setup.units
        method.check(model)
        probe = (probe or method.probe).check()  # now, not after a dense training that may take hours
        steps = ModelSteps(model, units, method, train=train, evaluate=evaluate, probe_batches=probe_batches,
                           setup=setup, probe=probe)
        identity = {"method": method.name, "ratio": method.ratio, "units": [u.name for u in units]}
        store: Store = MemoryStore()
        recorder = None
        if setup.run_dir is not None:
            if not setup.resume:
                RunDir(setup.run_dir).clear()
            store, recorder = DirStore(setup.run_dir), RunRecorder(setup.run_dir)
        result = run_rounds(steps, stop, store=store, recorder=recorder, reporter=setup.reporter, identity=identity,
                            resume=setup.resume)
        result.model = make_permanent(result.model)  # plain weights with their zeros: no weight_orig/weight_mask left
        return result
    except ConfigError as exc:
        raise exc.for_caller(API_NAMES) from None


# What prune()'s arguments are called in the config, so that a refusal names the argument the caller passed
API_NAMES = {"entropy.zero_state": "probe.zero_state", "entropy.layer_mean": "probe.layer_mean",
             "entropy.pooling": "probe.pooling", "entropy.split": "probe.split", "output_root": "setup.run_dir"}
