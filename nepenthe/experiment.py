"""One run's parts built from a validated :class:`~nepenthe.config.RunConfig`: data, model, units, method, and the
train / probe / assess / collapse steps (the :class:`~nepenthe.loop.Steps` that :func:`~nepenthe.loop.run_rounds`
drives, through :func:`~nepenthe.runner.run_experiment`); ``python -m nepenthe.collapse`` rebuilds it from a run
directory. Plain values only, no Hydra.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .collapse import collapse, fold_batchnorm_only, save_collapsed
from .collapse.pipeline import detached_copy
from .collapse.verify import outputs, relative_diff
from .checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, load_compact_state
from .config import RunConfig, load_run_config, validate
from .data import create_data
from .engine import autocast_dtype, evaluate, fit, resolve_device, seed_everything
from .errors import NepentheError
from .metrics import latency_stats
from .discovery import model_units
from .loop import probe_units
from .models import create_model
from .pruning.masks import make_permanent
from .pruning.methods import ENTROPY_BUDGET_METHODS, create_method, linearize
from .tracking import COLLAPSED_FILE, CONFIG_FILE, read_summary
from .units import unit_layouts


class Experiment:
    """Everything one run needs, built from a validated :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.hardware.device)
        self.amp = autocast_dtype(cfg.hardware.precision)
        if cfg.hardware.threads:
            torch.set_num_threads(cfg.hardware.threads)
        self.data = create_data(cfg.dataset.name, cfg.dataset.root, progress=cfg.progress, **cfg.dataset.kwargs)
        self.model = self.new_model()
        self.units = model_units(self.model)
        options = {"rounding": cfg.pruning.rounding} if cfg.pruning.method in ENTROPY_BUDGET_METHODS else {}
        self.method = create_method(cfg.pruning.method, cfg.pruning.ratio, **options)
        # in-memory splits copied to the training device once (a no-op on CPU); streamed ones decode into pinned memory
        self.data_device = self.device if cfg.hardware.data_on_device else None
        self.train_loader = self.data.loader("train", cfg.train.batch_size, seed=cfg.seed, device=self.data_device)

    def new_model(self):
        seed_everything(self.cfg.seed)
        model = create_model(self.cfg.model.name, self.data.num_classes, self.data.in_chans, **self.cfg.model.kwargs)
        model = model.to(self.device)
        if self.cfg.hardware.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def fit(self, round_index: int, checkpoints=None) -> dict:
        """Dense training (round 0) or a round's fine-tuning; with ``checkpoints`` (a
        :class:`~nepenthe.loop.EpochCheckpoints`) saved after every epoch and resumed mid-round."""
        cfg, ft = self.cfg, self.cfg.finetune
        dense = round_index == 0
        seed_everything(cfg.seed * 1000 + round_index)  # each round's draws do not depend on how we got here
        resume = checkpoints.restore(self.model) if checkpoints is not None else None
        on_epoch_end = (lambda state: checkpoints.save(self.model, state)) if checkpoints is not None else None
        return fit(
            self.model, self.train_loader, self.epochs_for(round_index),
            lr=cfg.train.lr if dense or ft.lr is None else ft.lr,
            milestones=cfg.train.milestones if dense or ft.milestones is None else ft.milestones,
            momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay, nesterov=cfg.train.nesterov,
            optimizer_name=cfg.train.optimizer,
            schedule=cfg.train.schedule, gamma=cfg.train.gamma, device=self.device, amp_dtype=self.amp,
            channels_last=cfg.hardware.channels_last, progress=cfg.progress,
            desc="dense" if dense else f"round {round_index}", first_epoch=round_index * 10_000,
            resume=resume, on_epoch_end=on_epoch_end, compile_model=cfg.hardware.compile,
        )

    def epochs_for(self, round_index: int) -> int:
        """Dense: train.epochs. Rounds: finetune.epochs, or an even share of finetune.total_epochs over
        stop.max_rounds, or (both null) train.epochs again: the schedule rewound, as in the reference codes."""
        cfg, ft = self.cfg, self.cfg.finetune
        if round_index == 0:
            return cfg.train.epochs
        if ft.total_epochs is not None:
            share, extra = divmod(ft.total_epochs, max(cfg.stop.max_rounds, 1))
            return share + (1 if round_index <= extra else 0)
        return cfg.train.epochs if ft.epochs is None else ft.epochs

    def probe(self, model=None):
        e = self.cfg.entropy
        return probe_units(
            model if model is not None else self.model, self.units,
            self.data.probe_loader(e.split, e.batch_size, seed=self.cfg.seed, device=self.data_device),
            device=self.device,
            zero_state=e.zero_state, layer_mean=e.layer_mean, pooling=e.pooling, autocast_dtype=self.amp,
            max_batches=e.max_batches, progress=self.cfg.progress,
        )

    def load_round(self, ckpt: dict, round_index: int) -> torch.nn.Module:
        """A fresh model with round ``round_index``'s weights, masks and identity swaps (from its checkpoint)."""
        model = load_compact_state(self.new_model(), ckpt["state"], ckpt["masks"])
        linearize(model, ckpt["records"][round_index].get("linearized", []))
        return model

    def assess(self, model=None, *, fp32: bool = False) -> dict:
        """Top-1 and loss on val and test, in the run's precision (``fp32=True``: in float32, no autocast)."""
        model = model if model is not None else self.model
        scores = {}
        for split in ("val", "test"):
            loader = self.data.loader(split, self.cfg.eval_batch_size, device=self.data_device)
            result = evaluate(model, loader, device=self.device, amp_dtype=None if fp32 else self.amp,
                              channels_last=self.cfg.hardware.channels_last)
            scores[f"{split}_acc"], scores[f"{split}_loss"] = result["acc"], result["loss"]
        return scores

    def verify_batch(self) -> torch.Tensor:
        """The first test images, preprocessed as the model sees them: the real data collapse is verified on."""
        images, _ = next(iter(self.data.loader("test", self.cfg.collapse.verify_batch)))
        images = images.to(self.device)
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.hardware.channels_last else images

    def collapse_and_measure(self, stats, out_dir: str | Path | None = None) -> tuple[torch.nn.Module, dict]:
        """Collapse ``self.model`` with the probe's ``stats``, verify, measure accuracy and latency side by side
        with the uncollapsed model and the BN-folded-only one, and save the collapsed model into ``out_dir``."""
        c = self.cfg.collapse
        batch = self.verify_batch()
        small, report = collapse(self.model, stats, batch, c.merge, layouts=unit_layouts(self.units),
                                 tolerance=c.tolerance, approximate_activations=c.approximate_activations)
        scores = self.assess(small)
        section = {**report.to_dict(), "test_acc": scores["test_acc"], "val_acc": scores["val_acc"],
                   "precision": self.cfg.hardware.precision}
        # the uncollapsed model timed as deployed: masks folded once, not re-applied on every call
        uncollapsed = make_permanent(detached_copy(self.model)).eval()
        if self.amp is not None:
            section.update(self.precision_check(uncollapsed, small, batch))
        # BN folding alone is timed too, so that what collapse itself buys is not credited with BN folding's gain
        timed = {"uncollapsed": uncollapsed, "bn_folded": fold_batchnorm_only(self.model, batch, c.tolerance),
                 "collapsed": small}
        if self.amp is not None:
            timed = {name: InRunPrecision(model, self.device.type, self.amp) for name, model in timed.items()}
        stats_ms = latency_stats(timed, batch[:1], c.latency_batches, min_run_time=c.latency_min_run_time,
                                 rounds=c.latency_rounds)
        section.update(
            latency_ms={name: {b: s["median"] for b, s in per.items()} for name, per in stats_ms.items()},
            latency_iqr_ms={name: {b: s["p75"] - s["p25"] for b, s in per.items()} for name, per in stats_ms.items()},
            latency_repeats=min(s["n"] for per in stats_ms.values() for s in per.values()),
            latency_threads=torch.get_num_threads(), latency_device=str(self.device),
            latency_precision=self.cfg.hardware.precision)
        if out_dir is not None:
            save_collapsed(small, batch, Path(out_dir) / COLLAPSED_FILE)
            section["file"] = COLLAPSED_FILE
        return small, section

    @torch.no_grad()
    def precision_check(self, uncollapsed, small, batch) -> dict:
        """Collapse is verified in float32; a reduced-precision run rounds the two graphs differently. Measure both:
        the output difference under the run's autocast, and both models' accuracy in float32, where collapse is
        exact, so the accuracy the summary reports equals what was verified."""
        with torch.autocast(self.device.type, dtype=self.amp):
            ours, theirs = outputs(small, batch)[0], outputs(uncollapsed, batch)[0]
        full, before = self.assess(small, fp32=True), self.assess(uncollapsed, fp32=True)
        return {"relative_diff_run_precision": relative_diff(ours, theirs),
                "test_acc_fp32": full["test_acc"], "val_acc_fp32": full["val_acc"],
                "uncollapsed_test_acc_fp32": before["test_acc"], "uncollapsed_val_acc_fp32": before["val_acc"]}


class InRunPrecision(torch.nn.Module):
    """A model called under the run's autocast, so latency is timed in the precision the run computes in."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)


def chosen_round(run_dir: Path, requested: int | None) -> int:
    """``requested``, else the summary's kept round, else the latest checkpoint's round."""
    if requested is not None:
        return requested
    summary = read_summary(run_dir)
    if summary is not None:
        return summary["final_round"]
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise NepentheError(f"{run_dir} holds no checkpoint to collapse")
    return load_checkpoint(latest)["round"]


def restore_run(run_dir: str | Path, round_index: int | None = None, *, merge=None, tolerance=None,
                verify_batch=None, device=None, data_root=None, approximate_activations=None
                ) -> tuple[Experiment, dict]:
    """Rebuild a run from its directory with one round's checkpoint loaded: ``(experiment, that round's record)``.
    Keyword arguments left at None keep the run's own settings."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise NepentheError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass the folder train.py wrote")
    cfg = load_run_config(run_dir / CONFIG_FILE)
    c = cfg.collapse
    cfg.collapse = replace(c, merge=merge or c.merge, tolerance=tolerance or c.tolerance,
                           verify_batch=verify_batch or c.verify_batch,
                           approximate_activations=c.approximate_activations if approximate_activations is None
                           else approximate_activations)
    cfg.hardware = replace(cfg.hardware, device=device or cfg.hardware.device)
    cfg.dataset = replace(cfg.dataset, root=data_root or cfg.dataset.root)
    cfg.progress = False
    validate(cfg)
    round_index = chosen_round(run_dir, round_index)
    path = checkpoint_path(run_dir, round_index)
    if not path.is_file():
        have = sorted(p.name for p in path.parent.glob("round_*.pt"))
        raise NepentheError(f"no checkpoint for round {round_index} in {path.parent}; found: {', '.join(have) or 'none'}")
    ckpt = load_checkpoint(path)
    exp = Experiment(cfg)
    exp.model = exp.load_round(ckpt, round_index)
    return exp, ckpt["records"][round_index]
