"""One run's parts built from a validated :class:`~nepenthe.config.RunConfig`: data, model, units, method, and the
train / probe / assess steps that :class:`~nepenthe.loop.RoundLoop` drives (:func:`~nepenthe.runner.run_experiment`).
Building one trains nothing and changes no process setting: threads are set by the runner, seeds by :meth:`fit`.
``python -m nepenthe_cli.collapse`` rebuilds one from a run directory (:func:`restore_run`). Plain values only, no
Hydra.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from .config import RunConfig, create_method_from, load_run_config, validate
from .data import create_data
from .deploy import Deployment
from .discovery import model_units
from .distill import DistillationLoss
from .distributed import SINGLE, Collective, restore_batchnorm
from .engine import TrainingPlan, autocast_dtype, evaluate, fit, resolve_device, seed_everything
from .entropy import probe_units
from .errors import NepentheError
from .estimate import BatchClock, RunWork, estimate_run
from .loop import DISTILL_TERM, METHOD_TERM
from .models import create_model
from .records import RoundRecord, RunEstimate
from .rundir import RunDir
from .store import Checkpoint, EpochCheckpoints, latest_checkpoint, load_checkpoint, restore_model
from .tracking import read_summary
from .units import unit_layouts

FINETUNE_SEED_OFFSET = 777_777  # the collapsed network's fine-tuning draws, apart from every round's


def round_seed(seed: int, round_index: int) -> int:
    """Each round's random draws depend on the run's seed and the round alone, not on how the run got there."""
    return seed * 1000 + round_index


class Experiment:
    """Everything one run needs, built from a validated :class:`RunConfig` (a :class:`~nepenthe.loop.Steps`)."""

    def __init__(self, cfg: RunConfig, collective: Collective = SINGLE):
        self.cfg, self.collective = cfg, collective
        self.device = resolve_device(cfg.hardware.device)
        self.amp = autocast_dtype(cfg.hardware.precision)
        self.data = create_data(cfg.dataset.name, cfg.dataset.root, progress=cfg.progress, **cfg.dataset.kwargs)
        self.model = self.new_model()
        self.units = model_units(self.model)
        self.method = create_method_from(cfg.pruning)
        self.method.check(self.model)
        # in-memory splits copied to the training device once (a no-op on CPU); streamed ones decode into pinned memory
        self.data_device = self.device if cfg.hardware.data_on_device else None
        collective.split_batch_size(cfg.train.batch_size)  # torchrun / srun: each process trains its part of a batch
        self.train_loader = self.data.loader("train", cfg.train.batch_size, seed=cfg.seed, device=self.data_device,
                                             shard=collective.shard())
        # the run's wall time foreseen after its first training steps, handed to on_estimate (the runner's reporter)
        self.estimate: RunEstimate | None = None
        self.on_estimate: Callable[[RunEstimate], None] | None = None
        self.clock = BatchClock(self._measured, device=self.device)
        # where distillation finds this run's dense model (the runner: its store's round 0), and the teacher loaded
        self.dense_checkpoint: Callable[[], Checkpoint] | None = None
        self._teacher: torch.nn.Module | None = None
        if cfg.finetune.teacher is not None and cfg.finetune.distill.weight:
            self.teacher()  # another run's model: checked now, before anything is trained or written

    def new_model(self) -> torch.nn.Module:
        """A freshly initialised model, the same for the same seed; the global random streams are left as they were."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            model = create_model(self.cfg.model.name, self.data.num_classes, self.data.in_chans,
                                 **self.cfg.model.kwargs)
        model = model.to(self.device)
        if self.cfg.hardware.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def epochs_for(self, round_index: int) -> int:
        """Dense: train.epochs. Rounds: finetune.epochs, or an even share of finetune.total_epochs over
        stop.max_rounds, or (both null) train.epochs again: the schedule rewound, as in the reference codes; a method
        may fix its own (LaCoOT: pruning.finetune_epochs)."""
        cfg, ft = self.cfg, self.cfg.finetune
        if round_index == 0:
            return cfg.train.epochs
        if ft.total_epochs is not None:
            share, extra = divmod(ft.total_epochs, max(cfg.stop.max_rounds, 1))
            configured = share + (1 if round_index <= extra else 0)
        else:
            configured = cfg.train.epochs if ft.epochs is None else ft.epochs
        return self.method.finetune_epochs(configured)

    def work(self) -> RunWork:
        """Everything the run may train and pass forward, up to the last round its stop rule allows."""
        cfg, sizes = self.cfg, self.data.sizes()
        rounds = self.method.stop_rule(cfg.stop, self.model).max_rounds
        e = cfg.entropy
        probed = sizes["train" if e.split in ("train", "train_aug") else e.split]
        if e.max_batches is not None:
            probed = min(probed, e.max_batches * (e.batch_size or cfg.train.batch_size))
        return RunWork(train_images=sizes["train"], batch_size=cfg.train.batch_size,
                       round_epochs=[self.epochs_for(r) for r in range(rounds + 1)],
                       forward_images_per_round=sizes["val"] + sizes["test"] + probed)

    def _measured(self, seconds_per_batch: float, steps: int) -> None:
        forward = self.forward_seconds_per_image()
        self.estimate = estimate_run(self.work(), seconds_per_batch, steps, self.device.type, forward)
        if self.on_estimate is not None:
            self.on_estimate(self.estimate)

    def forward_seconds_per_image(self) -> float:
        """One evaluation batch timed as the run evaluates (eval mode, its precision and memory format), after a
        small warm-up one. Called between two training steps: eval mode draws no random number and changes no
        statistic, this process alone (no collective), and the training mode is restored."""
        images, labels = next(iter(self.data.loader("val", self.cfg.eval_batch_size, device=self.data_device)))

        def run(batch) -> None:
            evaluate(self.model, [batch], device=self.device, amp_dtype=self.amp,
                     channels_last=self.cfg.hardware.channels_last)

        run((images[:8], labels[:8]))  # warm-up: allocations at a new batch size
        start = time.perf_counter()
        run((images, labels))  # ends with a host sync (the sums are read)
        return (time.perf_counter() - start) / images.shape[0]

    def training_plan(self, round_index: int) -> TrainingPlan:
        """Dense training (round 0) or a round's fine-tuning, as configured."""
        cfg, ft, hw = self.cfg, self.cfg.finetune, self.cfg.hardware
        dense = round_index == 0
        train = replace(cfg.train, epochs=self.epochs_for(round_index),
                        lr=cfg.train.lr if dense or ft.lr is None else ft.lr,
                        milestones=list(cfg.train.milestones if dense or ft.milestones is None else ft.milestones))
        return TrainingPlan(train, device=self.device, amp_dtype=self.amp, channels_last=hw.channels_last,
                            compile=hw.compile, progress=cfg.progress,
                            desc="dense" if dense else f"round {round_index}", first_epoch=round_index * 10_000,
                            collective=self.collective, clock=self.clock)

    def fit(self, round_index: int, checkpoints: EpochCheckpoints) -> dict:
        """Train the round (the method's loss term included), saving after every epoch and resuming mid-round; in a
        distributed run through DistributedDataParallel."""
        seed_everything(round_seed(self.cfg.seed, round_index))
        resume = checkpoints.restore(self.model)
        terms = {METHOD_TERM: self.method.loss_term(self.model)}
        distill = self.cfg.finetune.distill
        if round_index > 0 and distill.weight and self.epochs_for(round_index):
            terms[DISTILL_TERM] = DistillationLoss(self.teacher(), distill.weight, distill.temperature)
        try:
            return fit(self.model, self.train_loader, self.training_plan(round_index), resume=resume,
                       on_epoch_end=lambda state: checkpoints.save(self.model, state),
                       loss_terms={name: term for name, term in terms.items() if term is not None},
                       wrap=self.collective.wrapper(self.device, self.cfg.hardware.sync_batchnorm))
        finally:
            restore_batchnorm(self.model)  # SyncBatchNorm only while training

    def teacher(self) -> torch.nn.Module:
        """The distillation teacher (``finetune.teacher``): the round-0 model of the run directory it names, else
        this run's own dense model (its round-0 checkpoint, through :attr:`dense_checkpoint`)."""
        if self._teacher is None:
            source = self.cfg.finetune.teacher
            if source is not None:
                path = RunDir(source).checkpoint(0)
                if not path.is_file():
                    raise NepentheError(f"finetune.teacher={source!r} holds no round-0 checkpoint ({path.name}); "
                                        f"give a run directory whose dense round finished")
                ckpt = load_checkpoint(path)
            elif self.dense_checkpoint is not None:
                ckpt = self.dense_checkpoint()
            else:
                raise NepentheError("distillation needs the dense model: this run has no store to read round 0 "
                                    "from (set finetune.teacher to a run directory)")
            try:
                self._teacher = restore_model(self.new_model(), ckpt)
            except RuntimeError as exc:  # another architecture's state dict
                raise NepentheError(f"the teacher's round-0 checkpoint does not fit this run's model "
                                    f"{self.cfg.model.name}: {str(exc).splitlines()[0]}") from exc
        return self._teacher

    def probe(self, model=None):
        e = self.cfg.entropy
        return probe_units(
            model if model is not None else self.model, self.units,
            self.data.probe_loader(e.split, e.batch_size, seed=self.cfg.seed, device=self.data_device),
            e, device=self.device, autocast_dtype=self.amp, progress=self.cfg.progress, collective=self.collective)

    def method_stats(self, model=None) -> dict:
        """What the method measures for its plan, on the validation split at the (global) training batch size."""
        loader = self.data.loader("val", self.cfg.train.batch_size, device=self.data_device)
        return self.method.measure(model if model is not None else self.model, loader, self.device, self.collective)

    def load_round(self, ckpt: Checkpoint) -> torch.nn.Module:
        """A fresh model with the checkpoint's weights, masks and identity swaps."""
        return restore_model(self.new_model(), ckpt)

    def assess(self, model=None, *, fp32: bool = False) -> dict:
        """Top-1 and loss on val and test, in the run's precision (``fp32=True``: in float32, no autocast)."""
        model = model if model is not None else self.model
        scores = {}
        for split in ("val", "test"):
            loader = self.data.loader(split, self.cfg.eval_batch_size, device=self.data_device)
            result = evaluate(model, loader, device=self.device, amp_dtype=None if fp32 else self.amp,
                              channels_last=self.cfg.hardware.channels_last, collective=self.collective)
            scores[f"{split}_acc"], scores[f"{split}_loss"] = result["acc"], result["loss"]
        return scores

    def deployment(self) -> Deployment:
        """What the collapse and its measurements need from this run, as plain values (nepenthe/deploy.py)."""
        cfg, c = self.cfg, self.cfg.collapse
        return Deployment(model=self.model, batch=self.verify_batch(), settings=c, assess=self.assess,
                          layouts=unit_layouts(self.units), device=self.device, amp=self.amp,
                          precision=cfg.hardware.precision, finetune=self.train_collapsed,
                          finetune_lr=c.finetune.lr or cfg.finetune.lr or cfg.train.lr,
                          train_images=self.train_images)

    def train_collapsed(self, network: torch.nn.Module, epochs: int, lr: float) -> dict:
        """Train ``network`` (a collapsed graph) in place on the training split with the run's optimizer settings:
        ``epochs`` at ``lr``, no milestones, its own random draws apart from every round's; distilled from the dense
        network when ``collapse.finetune.distill.weight`` > 0."""
        plan = self.training_plan(1)
        plan = replace(plan, train=replace(plan.train, epochs=epochs, lr=lr, milestones=[]),
                       desc="collapsed fine-tune", compile=False)
        distill = self.cfg.collapse.finetune.distill
        terms = {DISTILL_TERM: DistillationLoss(self.teacher(), distill.weight, distill.temperature)} \
            if distill.weight else {}
        seed_everything(self.cfg.seed * 1000 + FINETUNE_SEED_OFFSET)
        return fit(network, self.train_loader, plan, loss_terms=terms)

    def train_images(self) -> torch.Tensor:
        """The first training batch of the run's seed (augmented as training sees it), on the training device."""
        images, _ = next(iter(self.data.loader("train", self.cfg.train.batch_size, seed=self.cfg.seed)))
        images = images.to(self.device)
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.hardware.channels_last else images

    def verify_batch(self) -> torch.Tensor:
        """The first test images, preprocessed as the model sees them: the real data collapse is verified on."""
        images, _ = next(iter(self.data.loader("test", self.cfg.collapse.verify_batch)))
        images = images.to(self.device)
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.hardware.channels_last else images


def chosen_round(run_dir: Path, requested: int | None) -> int:
    """``requested``, else the summary's kept round, else the latest checkpoint's round."""
    if requested is not None:
        return requested
    summary = read_summary(run_dir)
    if summary is not None:
        return summary.kept_round
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise NepentheError(f"{run_dir} holds no checkpoint to collapse")
    return load_checkpoint(latest).round


def restore_run(run_dir: str | Path, round_index: int | None = None, *, device=None, data_root=None,
                **collapse_settings) -> tuple[Experiment, RoundRecord]:
    """Rebuild a run from its directory with one round's checkpoint loaded: ``(experiment, that round's record)``.
    ``collapse_settings`` are ``collapse.*`` keys (merge, tolerance, onnx, runtimes, ...; ``finetune_epochs``,
    ``finetune_lr``, ``finetune_batchnorm``, ``distill_weight``, ``distill_temperature`` for
    ``collapse.finetune.*``); those left at None, and
    ``device`` / ``data_root`` left at None, keep the run's own settings."""
    run_dir = Path(run_dir)
    config = RunDir(run_dir).config
    if not config.is_file():
        raise NepentheError(f"{run_dir} is not a run directory (no {config.name}); pass the folder train.py wrote")
    cfg = load_run_config(config)
    finetune = {key: collapse_settings.pop(f"finetune_{key}", None) for key in ("epochs", "lr", "batchnorm")}
    distill = {key: collapse_settings.pop(f"distill_{key}", None) for key in ("weight", "temperature")}
    cfg.collapse = replace(cfg.collapse, **{k: v for k, v in collapse_settings.items() if v is not None})
    cfg.collapse.finetune = replace(cfg.collapse.finetune, **{k: v for k, v in finetune.items() if v is not None})
    cfg.collapse.finetune.distill = replace(cfg.collapse.finetune.distill,
                                            **{k: v for k, v in distill.items() if v is not None})
    cfg.hardware = replace(cfg.hardware, device=device or cfg.hardware.device)
    cfg.dataset = replace(cfg.dataset, root=data_root or cfg.dataset.root)
    cfg.progress = False
    validate(cfg)
    round_index = chosen_round(run_dir, round_index)
    path = RunDir(run_dir).checkpoint(round_index)
    if not path.is_file():
        have = sorted(p.name for p in path.parent.glob("round_*.pt"))
        raise NepentheError(f"no checkpoint for round {round_index} in {path.parent}; found: "
                            f"{', '.join(have) or 'none'}")
    ckpt = load_checkpoint(path)
    exp = Experiment(cfg)
    exp.model = exp.load_round(ckpt)
    exp.dense_checkpoint = lambda: load_checkpoint(RunDir(run_dir).checkpoint(0))  # the distillation teacher
    return exp, ckpt.records[round_index]
