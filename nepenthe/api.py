"""NEPENTHE (or any method) on your own model, data and training function: :func:`prune` (docs/own_model.md)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .config import StopConfig, check_stop
from .choices import LAYER_MEANS, POOLINGS, ZERO_STATES
from .entropy import probe_units
from .errors import ConfigError, check_choice
from .inputs import check_percent
from .loop import LoopResult, Reporter, run_rounds
from .pruning.methods import Method
from .pruning.masks import make_permanent
from .pruning.registry import build_method
from .store import Checkpoint, DirStore, EpochCheckpoints, MemoryStore, restore_model
from .rundir import RunDir
from .tracking import RunRecorder
from .units import Unit


class ModelSteps:
    """The loop's steps (:class:`~nepenthe.loop.Steps`) for a model, batches and functions of your own."""

    def __init__(self, model, units, method, *, train, evaluate, probe_batches, train_dense=False, device=None,
                 entropy_options: Mapping | None = None, method_batches: Iterable | None = None):
        self.template = copy.deepcopy(model)  # the architecture to reload rounds into (before any mask)
        self.model, self.units, self.method = model, units, method
        self.train, self.evaluate, self.probe_batches = train, evaluate, probe_batches
        self.method_batches = method_batches if method_batches is not None else probe_batches
        self.train_dense = train_dense
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.entropy_options = dict(entropy_options or {})

    def fit(self, round_index: int, checkpoints: EpochCheckpoints) -> dict:
        # your train() owns its epochs: nothing is checkpointed inside a round
        if round_index == 0 and not self.train_dense:
            return {}
        result = self.train(self.model, round_index)
        return dict(result) if isinstance(result, Mapping) else {}

    def probe(self, model=None):
        return probe_units(model if model is not None else self.model, self.units, self.probe_batches,
                           device=self.device, **self.entropy_options)

    def method_stats(self, model=None) -> dict:
        return self.method.measure(model if model is not None else self.model, self.method_batches, self.device)

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


def prune(model: nn.Module, *, train: Callable, evaluate: Callable, probe_batches: Iterable,
          method: str | Method = "nepenthe", ratio: float = 0.5, units: list[Unit] | None = None,
          max_rounds: int = 10, max_drop: float = 1.0, target_zero_units: int | None = None,
          train_dense: bool = False, run_dir: str | Path | None = None, resume: bool = True,
          zero_state: str | None = None, layer_mean: str | None = None, pooling: str | None = None,
          method_batches: Iterable | None = None, device=None, reporter: Reporter | None = None) -> LoopResult:
    """NEPENTHE (or another method) on your own model, with your own training and evaluation.

    ``train(model, round_index)`` fine-tunes in place (round 0 is dense training, called only with
    ``train_dense=True``; may return ``{"train_acc", "train_loss", "epochs"}``); ``evaluate(model)`` returns the
    validation top-1 in % or a dict with ``val_acc`` (and optionally ``test_acc``); ``probe_batches`` is an iterable of
    ``(images, labels)`` or images that the entropy is measured on (training images without augmentation, as the
    reference codes). Entropy options left at None are the method's own (``create_method("egp").probe``). A method
    that measures something to plan (LaCoOT: validation MSWD) measures it on ``method_batches`` (default
    ``probe_batches``); LaCoOT's training term is ``method.loss_term(model)``, which your ``train`` adds to its loss.
    Units are found on the model (:func:`~nepenthe.discovery.model_units`) unless given. With ``run_dir`` every round
    is checkpointed and recorded there (``rounds.jsonl``) and a re-run resumes. Returns the kept round's model (its
    masks made permanent: plain weights holding their zeros, no ``weight_orig``/``weight_mask``), its probe (ready for
    :func:`~nepenthe.collapse.collapse`) and every record. A refusal names the argument as passed here (``ratio=``).
    """
    from .discovery import model_units

    try:
        stop = check_stop(StopConfig(max_drop=max_drop, max_rounds=max_rounds, target_zero_units=target_zero_units))
        method = build_method(method, ratio, {}) if isinstance(method, str) else method
        units = model_units(model) if units is None else units
        method.check(model)
        given = {"zero_state": zero_state, "layer_mean": layer_mean, "pooling": pooling}
        entropy = {k: getattr(method.probe, k) if v is None else v for k, v in given.items()}
        for key, value in entropy.items():  # now, not after a dense training that may take hours
            check_choice(f"entropy.{key}", value, ENTROPY_CHOICES[key])
        steps = ModelSteps(model, units, method, train=train, evaluate=evaluate, probe_batches=probe_batches,
                           train_dense=train_dense, device=device, entropy_options=entropy,
                           method_batches=method_batches)
        identity = {"method": method.name, "ratio": method.ratio, "units": [u.name for u in units]}
        store, recorder = MemoryStore(), None
        if run_dir is not None:
            if not resume:
                RunDir(run_dir).clear()
            store, recorder = DirStore(run_dir), RunRecorder(run_dir)
        result = run_rounds(steps, stop, store=store, recorder=recorder, reporter=reporter, identity=identity,
                            resume=resume)
        result.model = make_permanent(result.model)  # plain weights with their zeros: no weight_orig/weight_mask left
        return result
    except ConfigError as exc:
        raise exc.for_caller(API_NAMES) from None


ENTROPY_CHOICES = {"zero_state": ZERO_STATES, "layer_mean": LAYER_MEANS, "pooling": POOLINGS}
# What prune()'s arguments are called in the config, so that a refusal names the argument the caller passed
API_NAMES = {"pruning.ratio": "ratio", "stop.max_drop": "max_drop", "stop.max_rounds": "max_rounds",
             "stop.target_zero_units": "target_zero_units", "entropy.zero_state": "zero_state",
             "entropy.layer_mean": "layer_mean", "entropy.pooling": "pooling", "output_root": "run_dir"}
