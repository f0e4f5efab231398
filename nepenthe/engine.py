"""Training and evaluation loops (SGD, optional bf16 autocast and channels_last), CPU or CUDA."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import interrupt
from .choices import DEVICES, OPTIMIZERS, SCHEDULES
from .config import TrainConfig
from .distributed import SINGLE, Collective
from .errors import ConfigError, NonFiniteLossError
from .estimate import BatchClock

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # hardware.precision (choices.PRECISIONS) -> autocast dtype


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"hardware.device={name!r} is unknown; choose from {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("hardware.device='cuda' but no CUDA device is visible; use hardware=cpu or hardware=auto")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ConfigError(f"hardware.precision={precision!r} is unknown; choose from {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool = False,
                   optimizer: str = "sgd", device: torch.device | None = None):
    """SGD (the CIFAR/Tiny-ImageNet/PACS protocols), Adam (the EASIER code's Flowers-102/DTD/Aircraft protocol) or
    AdamW (Swin-T's own defaults, conf/model/swin_t.yaml).
    On CUDA the fused kernels update every parameter in one launch; on CPU torch's default implementation is kept,
    which keeps CPU runs bit for bit what they were."""
    fused: dict[str, Any] = {"fused": True} if device is not None and torch.device(device).type == "cuda" else {}
    if optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **fused)
    if optimizer == "adamw":  # decoupled weight decay: how transformers (Swin-T) are trained
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, **fused)
    if optimizer != "sgd":
        raise ConfigError(f"train.optimizer={optimizer!r} is unknown; choose from {', '.join(OPTIMIZERS)}")
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0, **fused)


def make_scheduler(optimizer, schedule: str, epochs: int, milestones: Iterable[int] = (), gamma: float = 0.1):
    """A per-epoch learning-rate schedule."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    raise ConfigError(f"train.schedule={schedule!r} is unknown; choose from {', '.join(SCHEDULES)}")


def _to_device(x, y, device, channels_last):
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


class LossTerm(Protocol):
    """A term added to the cross-entropy during training (LaCoOT's transport regulariser, distillation from the
    dense network): attached to the model for one fit, it sees the forward pass through hooks and returns its
    weighted term for the last batch."""

    def attach(self, model: nn.Module) -> None: ...

    def detach(self) -> None: ...

    def __call__(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrainingPlan:
    """Everything one fit does: the optimizer and schedule settings (``train``, a
    :class:`~nepenthe.config.TrainConfig`: the config's own type, its ``batch_size`` belongs to the loader) and where
    and how it runs. Built by the caller once (``Experiment.training_plan``). A fresh optimizer and schedule per fit:
    the reference protocol rewinds both."""

    train: TrainConfig
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False  # train through torch.compile(model); the module itself is what the caller holds
    progress: bool = False
    desc: str = "fit"
    first_epoch: int = 0  # offsets the loader's epoch counter so that every round draws its own shuffles and crops
    collective: Collective = SINGLE  # the processes training together (data parallel); alone by default
    clock: BatchClock | None = None  # times the first training steps for the run's estimate (nepenthe/estimate.py)


class _Stopped(Exception):
    """Raised inside an epoch at the batch boundary where a stop was requested; carries the epoch's partial sums."""

    def __init__(self, signum: int, batches: int, sums: dict):
        self.signum, self.batches, self.sums = signum, batches, sums


def _partial_term_sums(sums: dict, names: list[str]) -> dict[str, float]:
    """The loss terms' sums of an epoch that stopped part-way (written before terms were named: one "term")."""
    if "terms" in sums:
        return dict(sums["terms"])
    return {names[0]: sums.get("term", 0.0)} if len(names) == 1 else {}


def train_one_epoch(model, loader, optimizer, plan: TrainingPlan, *, desc: str | None = None, check_every=50,
                    loss_terms: Mapping[str, LossTerm] | None = None, skip: int = 0, sums: dict | None = None) -> dict:
    """One epoch, where and how ``plan`` says (device, precision, memory format, progress bar): the loss is the
    cross-entropy plus every one of ``loss_terms`` (by name), each part's mean returned (``ce``, ``terms``).
    ``skip`` batches are drawn (the loader's random stream advances as before) but not trained on, and ``sums``
    continue an epoch that stopped there. A stop requested by a signal (:mod:`nepenthe.interrupt`) ends the epoch
    after the batch in progress with :class:`_Stopped`."""
    device, amp_dtype, channels_last = plan.device, plan.amp_dtype, plan.channels_last
    loss_terms = dict(loss_terms or {})
    names = list(loss_terms)
    model.train()
    sums = sums or {}
    loss_sum = torch.tensor(sums.get("loss", 0.0), device=device, dtype=torch.float64)
    # an epoch stopped before the cross-entropy was summed apart: its loss less its terms
    ce_sum = torch.tensor(sums.get("ce", sums.get("loss", 0.0) - sums.get("term", 0.0)), device=device,
                          dtype=torch.float64)
    partial = _partial_term_sums(sums, names)
    term_sums = {name: torch.tensor(partial.get(name, 0.0), device=device, dtype=torch.float64) for name in names}
    correct = torch.tensor(sums.get("correct", 0), device=device, dtype=torch.long)
    seen = int(sums.get("seen", 0))
    bar = tqdm(loader, desc=desc or plan.desc, leave=False, disable=not plan.progress, initial=skip)
    if plan.clock is not None:
        plan.clock.epoch_started()
    for step, (x, y) in enumerate(bar):
        if step < skip:
            continue  # trained before the stop: drawn again so that the rest of the epoch sees the same batches
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        ce_sum += loss.detach().double() * y.shape[0]
        for name, loss_term in loss_terms.items():
            term = loss_term()
            term_sums[name] += term.detach().double() * y.shape[0]
            loss = loss + term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if plan.clock is not None:
            plan.clock.tick()
        loss_sum += loss.detach().double() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
        # One host sync every `check_every` steps: cheap, and a NaN stops the run within seconds.
        if (step + 1) % check_every == 0:
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{desc}: loss became {value} at step {step + 1}; lower train.lr "
                                         f"(now {optimizer.param_groups[0]['lr']:.3g}){_precision_hint(amp_dtype)}")
            bar.set_postfix(loss=f"{value:.3f}")
        signum = interrupt.requested()
        if signum is not None and step + 1 < len(loader):
            raise _Stopped(signum, step + 1, {"loss": float(loss_sum), "ce": float(ce_sum),
                                              "terms": {n: float(v) for n, v in term_sums.items()},
                                              "correct": int(correct), "seen": seen})
    totals = torch.stack([loss_sum, ce_sum, *term_sums.values(), correct.double(),
                          torch.tensor(float(seen), device=device, dtype=torch.float64)])
    plan.collective.all_reduce_sum([totals])  # a distributed run: every process's part of the epoch
    loss_total, ce_total, *term_totals, correct_total, seen_total = (float(v) for v in totals)
    seen_total = max(seen_total, 1)
    mean_loss = loss_total / seen_total
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"{desc}: mean loss is {mean_loss}; lower train.lr{_precision_hint(amp_dtype)}")
    return {"loss": mean_loss, "acc": 100.0 * correct_total / seen_total, "ce": ce_total / seen_total,
            "terms": {name: total / seen_total for name, total in zip(names, term_totals)}}


@torch.no_grad()
def evaluate(model, loader, *, device, amp_dtype=None, channels_last=False, collective: Collective = SINGLE) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy; the model's train/eval mode is restored afterwards. Across the
    processes of ``collective`` whole batches are dealt round-robin and the sums added."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct, seen
    for x, y in collective.my_batches(loader):
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        sums[0] += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += y.shape[0]
    model.train(was_training)
    collective.all_reduce_sum([sums])
    loss, correct, seen = (float(v) for v in sums)
    return {"loss": loss / max(seen, 1), "acc": 100.0 * correct / max(seen, 1)}


def rng_state() -> dict:
    """Every random stream a training epoch draws from (dropout, stochastic depth, anything seeded globally)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(model, loader, plan: TrainingPlan, *, resume: dict | None = None, on_epoch_end=None,
        loss_terms: Mapping[str, LossTerm] | None = None, wrap=None) -> dict:
    """Train ``plan.train.epochs`` epochs with a fresh optimizer and schedule; returns ``train_loss`` (the whole
    loss), ``train_acc``, ``epochs``, ``train_ce_loss`` (its cross-entropy part) and ``train_terms`` ({name: mean}
    of each loss term), all over the last epoch.

    ``on_epoch_end(state)`` receives, after every epoch, what continuing needs besides the model's own state
    (epochs done, optimizer, scheduler, RNG streams, last metrics); ``resume=state`` continues from it, and the model
    (loaded by the caller) then ends exactly where an uninterrupted call would. A stop requested by a signal
    (:mod:`nepenthe.interrupt`) hands ``on_epoch_end`` the same state at the batch boundary where training stopped
    (``batch``: the batches of the epoch in progress already trained, with their sums), then raises
    :class:`~nepenthe.interrupt.StopRequested`; resuming from that state trains the rest of that epoch. Every one of
    ``loss_terms`` is attached to the model for this fit and its value added to every batch's loss (a method's
    regulariser, distillation). ``wrap(model)`` gives the module
    that trains (``DistributedDataParallel`` in a distributed run); the state always belongs to ``model``.
    """
    if plan.train.epochs < 0:
        raise ConfigError(f"epochs={plan.train.epochs} must be >= 0")
    t = plan.train
    optimizer = make_optimizer(model, t.lr, t.momentum, t.weight_decay, t.nesterov, t.optimizer, plan.device)
    scheduler = make_scheduler(optimizer, t.schedule, t.epochs, t.milestones, t.gamma)
    step_model = wrap(model) if wrap is not None else model
    step_model = torch.compile(step_model) if plan.compile else step_model
    last: dict[str, Any] = {"loss": float("nan"), "acc": float("nan")}
    start, skip, sums = 0, 0, None
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start, last = resume["epoch"], resume["last"]
        skip, sums = resume.get("batch", 0), resume.get("sums")
    loss_terms = dict(loss_terms or {})
    for loss_term in loss_terms.values():
        loss_term.attach(model)

    def state(epoch_done: int, **partial) -> dict:
        # copies: the live optimizer buffers keep changing after this point
        return {"epoch": epoch_done, "epochs": plan.train.epochs, "optimizer": copy.deepcopy(optimizer.state_dict()),
                "scheduler": copy.deepcopy(scheduler.state_dict()), "rng": rng_state(), "last": dict(last), **partial}

    try:
        for epoch in range(start, plan.train.epochs):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(plan.first_epoch + epoch)
            try:
                last = train_one_epoch(step_model, loader, optimizer, plan,
                                       desc=f"{plan.desc} {epoch + 1}/{plan.train.epochs}", loss_terms=loss_terms,
                                       skip=skip, sums=sums)
            except _Stopped as stop:
                if on_epoch_end is not None:
                    on_epoch_end(state(epoch, batch=stop.batches, sums=stop.sums))
                interrupt.clear()
                raise interrupt.StopRequested(stop.signum, f"in {plan.desc} at epoch {epoch + 1}/{plan.train.epochs}, "
                                                           f"batch {stop.batches}/{len(loader)}") from None
            skip, sums = 0, None
            scheduler.step()
            plan.collective.broadcast_buffers(model)  # the model every process evaluates is the one process 0 saves
            if on_epoch_end is not None:
                on_epoch_end(state(epoch + 1))
    finally:
        for loss_term in loss_terms.values():
            loss_term.detach()
    # an epoch state written before the parts were kept apart has "term" only (one term) and no "ce"
    terms = _partial_term_sums(last, list(loss_terms)) if {"terms", "term"} & set(last) else {}
    loss = float(last["loss"])
    return {"train_loss": loss, "train_acc": last["acc"], "epochs": plan.train.epochs,
            "train_ce_loss": last.get("ce", loss - sum(terms.values())), "train_terms": terms}


def _precision_hint(amp_dtype) -> str:
    """Suggest fp32 only to a run that is not already in fp32."""
    return "" if amp_dtype is None else " or use hardware.precision=fp32"
