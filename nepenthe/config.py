"""Typed schemas for every config group and their validation.

``train.py`` merges the Hydra-composed config into :class:`RunConfig` (OmegaConf checks the types) and calls
:func:`validate`, which checks names and ranges and raises one :class:`~nepenthe.errors.ConfigError` line naming the
value and what would be valid, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

from .choices import (
    DEVICES,
    LOGGER_MODES,
    LOGGERS,
    MERGES,
    OPTIMIZERS,
    PRECISIONS,
    RUNTIMES,
    SCHEDULES,
)
from .data import list_data
from .entropy import ProbeSettings
from .errors import ConfigError, bad_option, check_choice, unknown_name
from .models import is_known_model, list_models
from .pruning.budget import check_ratio
from .pruning.registry import METHODS, STOP_KEYS, method_entry


@dataclass
class ModelConfig:
    name: str = "compact_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder keyword arguments (e.g. maxpool, width)


@dataclass
class DatasetConfig:
    name: str = "fashion_mnist"
    root: str = "data"
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder keyword arguments (val_size, train_subset, ...)


@dataclass
class PruningConfig:
    """``method`` and ``ratio``, then every method's own options. An option left null takes its method's default
    (the ``Options`` dataclass of its class, declared in nepenthe/pruning/registry.py); validation writes it in, so
    the resolved config and the records say the value used. Setting an option the method lacks is refused."""

    method: str = "nepenthe"
    ratio: float = 0.5  # fraction of the remaining prunable weights removed per round
    rounding: Optional[str] = None  # nepenthe/egp: shares -> counts, nearest (nepenthe) | floor (egp: the code's int())
    # LaCoOT (pruning=lacoot; nepenthe/pruning/lacoot.py LacootOptions says what each does)
    lambda_reg: Optional[float] = None
    n_projections: Optional[int] = None
    p: Optional[float] = None
    units: Optional[list[Any]] = None
    order: Optional[str] = None
    finetune_epochs: Optional[int] = None


@dataclass
class HardwareConfig:
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False
    threads: Optional[int] = None  # torch.set_num_threads; None keeps torch's default
    compile: bool = False  # torch.compile the training step's model (recompiled when a round changes the masks)
    data_on_device: bool = True  # in-memory datasets live on the training device; batches are built there
    sync_batchnorm: bool = False  # a distributed run: batch norm statistics over the global batch


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    mode: str = "offline"  # wandb mode: offline | online | disabled
    project: str = "nepenthe"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 10.0  # seconds W&B may take to start; after that the run goes on offline


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    optimizer: str = "sgd"  # sgd | adam | adamw
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class DistillConfig:
    """Knowledge distillation from the dense network while fine-tuning (nepenthe/distill.py): the loss becomes
    cross-entropy + weight · T² · KL(teacher's softened output ‖ the student's), T = temperature (Hinton et al.)."""

    weight: float = 0.0  # 0: off (plain cross-entropy, as every run before the option existed)
    temperature: float = 4.0


@dataclass
class FinetuneConfig:
    epochs: Optional[int] = None  # None: rewind the full training schedule every round (reference protocol)
    lr: Optional[float] = None  # None: train.lr
    milestones: Optional[list[int]] = None  # None: train.milestones
    # Same total fine-tuning for every method: spread over stop.max_rounds rounds (the first ones get the remainder)
    total_epochs: Optional[int] = None
    distill: DistillConfig = field(default_factory=DistillConfig)  # every round's fine-tuning (not the dense round)
    # The distillation teacher (here and collapse.finetune.distill): None, this run's dense model (round 0); or a
    # run directory whose round-0 model has this run's architecture (LaCoOT: a plain, unregularised dense run)
    teacher: Optional[str] = None


@dataclass
class StopConfig:
    max_drop: float = 1.0  # accuracy points below dense (validation) a kept round may lose
    max_rounds: int = 10
    target_zero_units: Optional[int] = None
    continue_past_drop: bool = False  # true: train every round up to max_rounds (the kept one stays within max_drop)


@dataclass
class CollapseFinetuneConfig:
    epochs: int = 0  # > 0: fine-tune the collapsed network itself (the approximate one when there is one)
    lr: Optional[float] = None  # None: finetune.lr, else train.lr (the run's optimizer settings otherwise)
    # true: a batch norm after every conv while it trains (set to the identity at the start, folded back exactly
    # afterwards: nepenthe/collapse/renormalize.py); false: the folded convs train bare
    batchnorm: bool = True
    distill: DistillConfig = field(default_factory=DistillConfig)  # its teacher: finetune.teacher's


@dataclass
class CollapseConfig:
    enabled: bool = True  # collapse → verify → report at the end of the run
    merge: str = "cost"  # cost (merges that lower MACs) | depth (alias always: every merge that removes a layer) |
    #                      latency (exact merges measured to run faster in merge_runtime) | never |
    #                      approximate (cost with approximate_merges)
    merge_runtime: str = "onnxruntime"  # where merge=latency times candidate merges (batch 1, the run's threads)
    approximate_merges: bool = False  # also build the network with border-ring merges; measured, never verified equal
    finetune: CollapseFinetuneConfig = field(default_factory=CollapseFinetuneConfig)
    onnx: bool = True  # export collapsed.onnx, verified in ONNX Runtime (the deploy extra; skipped with why otherwise)
    runtimes: list[str] = field(default_factory=lambda: ["eager", "compile", "onnxruntime"])  # latency measured in
    tolerance: float = 1e-4  # allowed |collapsed − linearized| / max |output| for the exact steps (relative, no floor)
    approximate_activations: bool = False  # replace always-ON ReLU6/GELU by the identity (measured error reported)
    verify_batch: int = 256  # test images the collapse is verified on (and the per-position constants sized for)
    latency_batches: list[int] = field(default_factory=lambda: [1, 64])
    latency_min_run_time: float = 0.5  # seconds per torch.utils.benchmark measurement
    latency_rounds: int = 3  # interleaved measurements per model; the best median is kept


@dataclass
class RunConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    entropy: ProbeSettings = field(default_factory=ProbeSettings)
    stop: StopConfig = field(default_factory=StopConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    eval_batch_size: int = 512
    progress: bool = True
    resume: bool = True
    output_root: str = "runs"
    name: str = "run"


# Keys that change how a run is watched or post-processed, not what it trains: a resumed run may differ in them, and
# the run directory's name leaves them out (train.py's run_id). A key matches itself and everything below it
# (collapse settings only shape the end-of-run report; ``python -m nepenthe_cli.collapse`` redoes it with others).
NON_SEMANTIC_KEYS = ("progress", "resume", "logger", "hardware.threads", "hardware.data_on_device", "output_root",
                     "name", "collapse")


def is_non_semantic(key: str) -> bool:
    """``collapse.merge`` and ``logger`` are non-semantic; ``seed`` is not."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS)


def _positive(option: str, value, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise bad_option(option, value, "must be >= 0" if allow_zero else "must be > 0")


def check_stop(stop: StopConfig) -> StopConfig:
    _positive("stop.max_drop", stop.max_drop, allow_zero=True)
    _positive("stop.max_rounds", stop.max_rounds, allow_zero=True)
    if stop.target_zero_units is not None:
        _positive("stop.target_zero_units", stop.target_zero_units)
    return stop


def check_distill(option: str, distill: DistillConfig) -> None:
    _positive(f"{option}.weight", distill.weight, allow_zero=True)
    _positive(f"{option}.temperature", distill.temperature)


def validate(cfg: RunConfig) -> RunConfig:
    if not is_known_model(cfg.model.name):
        raise unknown_name("model", cfg.model.name, list_models())
    if cfg.dataset.name not in list_data():
        raise unknown_name("dataset", cfg.dataset.name, list_data())
    check_method_settings(cfg)
    check_choice("hardware.device", cfg.hardware.device, DEVICES)
    check_choice("hardware.precision", cfg.hardware.precision, PRECISIONS)
    check_choice("logger.name", cfg.logger.name, LOGGERS)
    check_choice("logger.mode", cfg.logger.mode, LOGGER_MODES)
    check_choice("train.schedule", cfg.train.schedule, SCHEDULES)
    check_choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    if cfg.entropy.batch_size is None:  # the training batch size, written in so the records say it
        cfg.entropy.batch_size = cfg.train.batch_size
    cfg.entropy.check()
    _positive("train.epochs", cfg.train.epochs, allow_zero=True)
    _positive("train.batch_size", cfg.train.batch_size)
    _positive("train.lr", cfg.train.lr)
    _positive("eval_batch_size", cfg.eval_batch_size)
    _positive("entropy.batch_size", cfg.entropy.batch_size)
    if cfg.entropy.max_batches is not None:
        _positive("entropy.max_batches", cfg.entropy.max_batches)
    check_stop(cfg.stop)
    if cfg.finetune.epochs is not None:
        _positive("finetune.epochs", cfg.finetune.epochs, allow_zero=True)
    if cfg.finetune.total_epochs is not None:
        _positive("finetune.total_epochs", cfg.finetune.total_epochs, allow_zero=True)
        if cfg.finetune.epochs is not None:
            raise ConfigError(f"finetune.total_epochs={cfg.finetune.total_epochs} and finetune.epochs="
                              f"{cfg.finetune.epochs} both set the fine-tuning length; keep one (the other null)")
    if cfg.finetune.lr is not None:
        _positive("finetune.lr", cfg.finetune.lr)
    check_distill("finetune.distill", cfg.finetune.distill)
    check_distill("collapse.finetune.distill", cfg.collapse.finetune.distill)
    if cfg.finetune.teacher is not None and not Path(cfg.finetune.teacher).is_dir():
        raise ConfigError(f"finetune.teacher={cfg.finetune.teacher!r} is not a directory; give a run directory (its "
                          f"round-0 checkpoint is the teacher) or null for this run's own dense model",
                          "finetune.teacher")
    if cfg.hardware.threads is not None:
        _positive("hardware.threads", cfg.hardware.threads)
    if cfg.hardware.sync_batchnorm and cfg.hardware.device == "cpu":
        raise ConfigError("hardware.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm runs on GPUs only); on CPU "
                          "each process normalises its own part of the global batch")
    check_choice("collapse.merge", cfg.collapse.merge, MERGES)
    check_choice("collapse.merge_runtime", cfg.collapse.merge_runtime, RUNTIMES)
    if cfg.collapse.merge == "latency" and cfg.collapse.approximate_merges:
        raise ConfigError("collapse.merge=latency takes exact merges only; collapse.approximate_merges=true needs "
                          "collapse.merge=cost or depth")
    for runtime in cfg.collapse.runtimes:
        check_choice("collapse.runtimes[]", runtime, RUNTIMES)
    _positive("collapse.finetune.epochs", cfg.collapse.finetune.epochs, allow_zero=True)
    if cfg.collapse.finetune.lr is not None:
        _positive("collapse.finetune.lr", cfg.collapse.finetune.lr)
    _positive("collapse.tolerance", cfg.collapse.tolerance)
    if cfg.collapse.tolerance >= 1:
        raise ConfigError(f"collapse.tolerance={cfg.collapse.tolerance!r} must be < 1: it is a bound relative to the "
                          f"output's size (1e-4 = 0.01 % of max |output|)")
    _positive("collapse.verify_batch", cfg.collapse.verify_batch)
    _positive("collapse.latency_min_run_time", cfg.collapse.latency_min_run_time)
    _positive("collapse.latency_rounds", cfg.collapse.latency_rounds)
    for size in cfg.collapse.latency_batches:
        _positive("collapse.latency_batches[]", size)
    return cfg


def check_method_settings(cfg: RunConfig) -> None:
    """The chosen method's registry entry decides: a setting it does not honour (``pruning.ratio`` of a method that
    prunes by no ratio, another method's option, a stop key its stop rule ignores) is refused, never ignored; its own
    options are checked by building it, and their defaults are written into ``cfg.pruning``."""
    pruning, entry = cfg.pruning, method_entry(cfg.pruning.method)
    if entry.uses_ratio:
        check_ratio(pruning.ratio)
    elif pruning.ratio != PruningConfig.ratio:
        raise ConfigError(f"pruning.ratio={pruning.ratio!r} does not apply to {entry.name}, which prunes by no ratio; "
                          f"leave it at {PruningConfig.ratio}", "pruning.ratio")
    for key in pruning_method_keys():
        value = getattr(pruning, key)
        if value is not None and key not in entry.option_names:
            owners = [name for name, e in METHODS.items() if key in e.option_names]
            raise ConfigError(f"pruning.{key}={value!r} applies to {', '.join(owners)} only; pruning.method="
                              f"{pruning.method!r} has no such option", f"pruning.{key}")
    for key in STOP_KEYS:
        if key not in entry.stop_keys and getattr(cfg.stop, key) != getattr(StopConfig, key):
            raise ConfigError(f"stop.{key}={getattr(cfg.stop, key)!r} does not apply to {entry.name}, whose stop rule "
                              f"honours {', '.join(f'stop.{k}' for k in entry.stop_keys) or 'no stop key'}",
                              f"stop.{key}")
    options = entry.resolved({k: getattr(pruning, k) for k in entry.option_names})
    for key in entry.option_names:
        setattr(pruning, key, getattr(options, key))
    create_method_from(pruning)  # the method checks its own options (one message naming the value)


# What every run's config.yaml held for each method option before methods declared their own (so a run of another
# method wrote LaCoOT's defaults too): such a value in a stored config means "not set" (upgrade_stored_config).
_STORED_OPTION_DEFAULTS = {"rounding": "nearest", "lambda_reg": 5.0, "n_projections": 50, "p": 2.0, "units": None,
                           "order": "by_val_mswd", "finetune_epochs": 0}


def upgrade_stored_config(data: dict) -> dict:
    """A config.yaml written before methods were declared once: other methods' option defaults become unset, and
    LaCoOT's own ``pruning.max_drop`` (the only bound its removals honoured) becomes ``stop.max_drop``."""
    pruning = data.get("pruning") or {}
    max_drop = pruning.pop("max_drop", None)
    if max_drop is not None and pruning.get("method") == "lacoot":
        data.setdefault("stop", {})["max_drop"] = max_drop
    method = pruning.get("method", PruningConfig.method)
    takes = METHODS[method].option_names if method in METHODS else ()
    for key, old in _STORED_OPTION_DEFAULTS.items():
        if key in pruning and key not in takes and pruning[key] == old:
            pruning[key] = None
    return data


def load_run_config(data) -> RunConfig:
    """Type-check a config (a dict, DictConfig or YAML file path) against :class:`RunConfig` and validate it. A file
    is a stored run's config.yaml: one written by an older version is upgraded first (:func:`upgrade_stored_config`)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        if isinstance(data, (str, Path)):
            stored = OmegaConf.to_container(OmegaConf.load(data), resolve=True)
            if not isinstance(stored, dict):
                raise ConfigError(f"{data} does not hold a config (a mapping of keys): {type(stored).__name__}")
            data = upgrade_stored_config(stored)
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)  # OmegaConf knows which key failed; its first line does not say
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {first}" if key else first) from exc
    return validate(cast(RunConfig, OmegaConf.to_object(merged)))


def pruning_method_keys() -> tuple[str, ...]:
    """``pruning.*`` keys that are options of some method (all but method and ratio)."""
    return tuple(f for f in PruningConfig.__dataclass_fields__ if f not in ("method", "ratio"))


def create_method_from(pruning: PruningConfig):
    """The configured method with the options it takes (``rounding`` for nepenthe/egp, LaCoOT's own)."""
    from .pruning.registry import build_method

    options = {k: getattr(pruning, k) for k in method_entry(pruning.method).option_names}
    return build_method(pruning.method, pruning.ratio, {k: v for k, v in options.items() if v is not None})


def semantic_dict(cfg: RunConfig) -> dict:
    """The config without the keys in :data:`NON_SEMANTIC_KEYS`, and without method options the chosen method does
    not take (they change nothing it does; runs written before those options existed keep their identity)."""
    data = asdict(cfg)
    takes = method_entry(cfg.pruning.method).option_names
    for key in pruning_method_keys():
        if key not in takes and key != "rounding":
            data["pruning"].pop(key)
    # rounding was in every run's identity before methods had options of their own (as "nearest" where the method
    # has none): kept so, so that those runs resume
    data["pruning"]["rounding"] = data["pruning"]["rounding"] or "nearest"
    # distillation off is what every run did before it existed: absent from the identity, so those runs resume
    if not cfg.finetune.distill.weight:
        del data["finetune"]["distill"], data["finetune"]["teacher"]
    for key in NON_SEMANTIC_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return data


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(json.dumps(semantic_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(a) | set(b))
    diffs = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            diffs.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return diffs
