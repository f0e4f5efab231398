"""NEPENTHE (or any method) on your own model, data and training function: :func:`prune` (docs/own_model.md)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .config import StopConfig
from .entropy import probe_units
from .errors import ConfigError
from .loop import LoopResult, Reporter, run_rounds
from .pruning.methods import Method
from .pruning.registry import create_method
from .store import Checkpoint, DirStore, EpochCheckpoints, MemoryStore, restore_model
from .tracking import RunRecorder, clear_run_outputs
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
        scores = dict(result) if isinstance(result, Mapping) else {"val_acc": float(result)}
        if "val_acc" not in scores:
            raise ConfigError(f"evaluate() must return the validation top-1 in % (a number) or a dict with "
                              f"'val_acc'; got keys {sorted(scores)}")
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
    is checkpointed and recorded there (``rounds.jsonl``) and a re-run resumes. Returns the kept round's model, its
    probe (ready for :func:`~nepenthe.collapse.collapse`) and every record.
    """
    from .discovery import model_units

    units = model_units(model) if units is None else units
    method = create_method(method, ratio) if isinstance(method, str) else method
    method.check(model)
    given = {"zero_state": zero_state, "layer_mean": layer_mean, "pooling": pooling}
    entropy = {k: getattr(method.probe, k) if v is None else v for k, v in given.items()}
    steps = ModelSteps(model, units, method, train=train, evaluate=evaluate, probe_batches=probe_batches,
                       train_dense=train_dense, device=device, entropy_options=entropy, method_batches=method_batches)
    stop = StopConfig(max_drop=max_drop, max_rounds=max_rounds, target_zero_units=target_zero_units)
    identity = {"method": method.name, "ratio": method.ratio, "units": [u.name for u in units]}
    store, recorder = MemoryStore(), None
    if run_dir is not None:
        if not resume:
            clear_run_outputs(run_dir)
        store, recorder = DirStore(run_dir), RunRecorder(run_dir)
    return run_rounds(steps, stop, store=store, recorder=recorder, reporter=reporter, identity=identity,
                      resume=resume)

