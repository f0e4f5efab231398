"""Every record a run writes, defined once: a round, the summary, the collapse result, a failed job's status.

Writers build these dataclasses and call :meth:`Record.to_dict`; readers call :meth:`Record.from_dict`, which checks
the schema version, upgrades records written by older versions and refuses keys it does not know, so a renamed field
fails loudly instead of emptying a table column. W&B holds the same dicts flattened with ``/`` (:func:`flatten`;
:func:`unflatten` is its inverse). ``python -m nepenthe.records`` prints the field tables that docs/DESIGN.md shows
(a test keeps the two equal): the docs are generated from the ``doc`` of each field below, never written twice.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, cast

from .choices import RUNTIMES
from .errors import NepentheError

SCHEMA_VERSION = 3  # 1: records written before this module existed (no "schema" key); 2: typed records;
#                    3: the kept round's model is "kept" in every name (it was "final" and "uncollapsed")


class RecordError(NepentheError):
    """A record that does not match its schema (unknown keys, missing required keys, a newer schema)."""


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field with its documentation (what the generated field tables print)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


class Record:
    """Base of every record: dict conversion with the schema version, and upgrades of older versions. Not a dataclass
    itself (each subclass is; the generated field tables list the subclasses' own fields), hence the casts for mypy."""

    #: keys renamed in each schema: {schema that renamed them: {old: new}}; a record older than that schema has them
    #: renamed on reading (one schema's renames after another's, so a schema-1 record goes through all of them)
    RENAMED: typing.ClassVar[dict[int, dict[str, str]]] = {}
    #: where keys a schema-1 record held but this class does not know go (None: refuse them)
    OVERFLOW: typing.ClassVar[str | None] = None
    #: written with a "schema" key (top-level records only; nested parts inherit their parent's)
    TOP_LEVEL: typing.ClassVar[bool] = False

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """Reshape an older schema's values (renames are in RENAMED)."""
        return data

    def to_dict(self) -> dict:
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(cast(Any, self))}
        return {"schema": SCHEMA_VERSION, **data} if self.TOP_LEVEL else data

    @classmethod
    def from_dict(cls, data: dict, schema: int | None = None, strict: bool = True):
        """``strict=False`` ignores keys this schema does not know (a W&B summary also holds the last round's)."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise RecordError(f"a {cls.__name__} must be a JSON object; got {type(data).__name__}")
        data = dict(data)
        version = data.pop("schema", schema if schema is not None else 1)
        if isinstance(version, float) and version.is_integer():  # a CSV cell (a W&B export) holds 2 as 2.0
            version = int(version)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise RecordError(f"{cls.__name__} has schema {version!r}, newer than this nepenthe reads "
                              f"({SCHEMA_VERSION}); upgrade nepenthe")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cast(Any, cls))}
        for renamed_in, renames in sorted(cls.RENAMED.items()):
            if version < renamed_in:
                data = {renames.get(k, k): v for k, v in data.items()}
        if version < 2:
            if cls.OVERFLOW is not None:
                extra = {k: data.pop(k) for k in list(data) if k not in names}
                data.setdefault(cls.OVERFLOW, {}).update(extra)
        data = cls.upgrade(data, version)
        unknown = sorted(set(data) - names)
        if unknown and not strict:
            data = {k: v for k, v in data.items() if k in names}
        elif unknown:
            raise RecordError(f"{cls.__name__} has unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names))}")
        values = {}
        for f in dataclasses.fields(cast(Any, cls)):
            if f.name in data:
                values[f.name] = _build(hints[f.name], data[f.name], version, strict)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{cls.__name__} lacks the required key {f.name!r}")
        return cls(**values)


def _plain(value):
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(hint, value, version: int, strict: bool = True):
    """``value`` (plain JSON) as the annotated type: records, and dicts/lists of records, are built recursively."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, version, strict) if len(inner) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value, schema=version, strict=strict)
    if origin is dict and len(args) == 2:
        return {k: _build(args[1], v, version, strict) for k, v in value.items()}
    if origin is list and args:
        return [_build(args[0], v, version, strict) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------------------------------
# rounds


@dataclass
class RoundRecord(Record):
    """One line of ``rounds.jsonl``: the model after a round (round 0: the dense model)."""

    TOP_LEVEL = True
    RENAMED = {2: {"linearized": "replaced_by_identity"}}
    OVERFLOW = "extra_scores"  # schema 1 spread what a user's evaluate() returned into the record

    round: int = doc("0 is the dense model, then one per pruning round")
    method: str = doc("pruning method (nepenthe, egp, easier, imp, lacoot, ...)", "")
    ratio: Optional[float] = doc("the method's per-round ratio", None)
    val_acc: float = doc("validation top-1 in %", float("nan"))
    test_acc: Optional[float] = doc("test top-1 in % (None: a run of your own that measures validation only)", None)
    val_loss: Optional[float] = doc("mean cross-entropy on the validation split", None)
    test_loss: Optional[float] = doc("mean cross-entropy on the test split", None)
    train_acc: Optional[float] = doc("training top-1 of the round's last epoch (augmented batches, train mode)", None)
    train_loss: Optional[float] = doc("training loss of the round's last epoch: the cross-entropy plus the terms "
                                      "below", None)
    train_ce_loss: Optional[float] = doc("its cross-entropy part (None: written before the parts were recorded)",
                                         None)
    train_reg_loss: Optional[float] = doc("a method's training regulariser (LaCoOT: λ · mean MSWD over units), last "
                                          "epoch's mean; None when the method adds none", None)
    train_distill_loss: Optional[float] = doc("the distillation term (finetune.distill: weight · T² · KL to the dense "
                                              "teacher), last epoch's mean; None without distillation", None)
    epochs: Optional[int] = doc("training epochs spent in this round", None)
    pruned: int = doc("weights removed this round", 0)
    plan: dict[str, int] = doc("{layer: weights removed this round}", factory=dict)
    frozen_units: list[str] = doc("zero-entropy units the method left alone this round", factory=list)
    replaced_by_identity: list[str] = doc("modules replaced by nn.Identity so far, in order (EASIER: activations; "
                                          "LaCoOT: blocks)", factory=list)
    sparsity: float = doc("fraction of pruned weights over every conv/linear layer", 0.0)
    unit_sparsity: dict[str, float] = doc("{unit: fraction of pruned weights in the layers feeding it} (a unit whose "
                                          "layers went with a removed block has none)", factory=dict)
    entropy: dict[str, float] = doc("{unit: layer entropy in bits}", factory=dict)
    neurons: dict[str, dict[str, int]] = doc("{unit: {neurons, always_on, always_off, switching}}", factory=dict)
    zero_entropy_units: list[str] = doc("units at exactly zero entropy (an identity-swapped unit counts)",
                                        factory=list)
    k: int = doc("number of zero-entropy units (the papers' depth metric)", 0)
    N: int = doc("number of units", 0)
    weight_layers: Optional[int] = doc("conv/linear layers on the longest path of this round's model, before any "
                                       "collapse (None: torch.fx cannot trace it)", None)
    method_stats: dict[str, Any] = doc("what the method measured for its plan (LaCoOT: val_mswd {unit: distance}, "
                                       "removal_order)", factory=dict)
    extra_scores: dict[str, Any] = doc("other values a user's evaluate() returned", factory=dict)
    wall_time_s: float = doc("seconds spent in this round", 0.0)
    elapsed_s: float = doc("seconds since the run started, resumes included", 0.0)
    processes: int = doc("processes that trained this round together (torchrun, srun: N; 1 alone)", 1)


# ---------------------------------------------------------------------------------------------------------------------
# cost and collapse


@dataclass
class Cost(Record):
    """The cost of one model for one input (``nepenthe.metrics.cost_report``)."""

    macs: int = doc("multiply-accumulates (torch.utils.flop_counter FLOPs / 2)", 0)
    macs_nonzero: int = doc("MACs with every conv/linear scaled by its fraction of non-zero weights", 0)
    params: int = doc("parameters (masked weights counted once)", 0)
    params_nonzero: int = doc("non-zero parameters", 0)
    weight_layers_on_longest_path: int = doc("conv/linear layers on the longest input-to-output path", 0)


@dataclass
class CollapseReport(Record):
    """What ``nepenthe.collapse.collapse`` did and measured on the verification batch; differences are max |a − b|
    over the outputs, ``*_relative_diff`` divides by the reference output's max |value|."""

    merge: str = doc("merge mode of the exact collapse: cost | depth (alias always) | latency | never", "cost")
    input_shape: list[int] = doc("shape of the verification batch (the collapsed model accepts only this size, "
                                 "any batch)", factory=list)
    tolerance: float = doc("allowed relative difference of the exact steps", 1e-4)
    approximate_activations: bool = doc("ReLU6/GELU units replaced where the probe saw them ON", False)
    units: list[dict[str, Any]] = doc("per unit: unit, action (identity | scale_folded | scale | zero | "
                                      "dead_channels_zeroed | kept), always_on, always_off, switching, neuron_dim, "
                                      "exact_on_probe, and approximation_error / approximation_declined + reason",
                                      factory=list)
    removed_layers: list[str] = doc("conv/linear layers no longer in the collapsed graph", factory=list)
    shared_layers: list[str] = doc("tied or directly read weight layers, never rewritten", factory=list)
    operations: list[dict[str, Any]] = doc("every rewrite in order: fold_batchnorm, drop_identity, fold_constant, "
                                           "fold_constant_into_bias, remove_channels, merge (layers, exact, "
                                           "macs_before/after, kernel, max_abs_diff, relative_diff, interior_*)",
                                           factory=list)
    before: Cost = doc("cost of the kept model (before the collapse)", factory=Cost)
    after: Cost = doc("cost of the collapsed model", factory=Cost)
    max_abs_diff: float = doc("collapsed (exact steps) vs the linearized reference", 0.0)
    relative_diff: float = doc("the same / max |reference output|; always <= tolerance", 0.0)
    border_diff: float = doc("what merge=approximate's border-ring merges add", 0.0)
    border_relative_diff: float = doc("the same, relative", 0.0)
    linearization_diff: float = doc("linearized vs kept: the probe's decision on this batch", 0.0)
    linearization_relative_diff: float = doc("the same, relative", 0.0)
    diff_vs_original: float = doc("collapsed vs kept", 0.0)
    relative_diff_vs_original: float = doc("the same, relative", 0.0)
    output_scale: float = doc("max |output| of the kept model on the batch", 0.0)

    @property
    def removed_weight_layers(self) -> int:
        return self.before.weight_layers_on_longest_path - self.after.weight_layers_on_longest_path


@dataclass
class ShippedNetwork(Record):
    """A network a run measures on its own besides the exact collapsed one: the collapse with approximate merges
    (border-ring merges, opt-in), or that network fine-tuned (``collapse.finetune.epochs``). Never verified equal to
    the kept model: its error and accuracy are measured and reported."""

    cost: Cost = doc("its cost per input", factory=Cost)
    test_acc: Optional[float] = doc("its test top-1 (the test split, measured on it)", None)
    val_acc: Optional[float] = doc("its validation top-1", None)
    relative_diff: Optional[float] = doc("max |its output - the exact collapsed output| / max |exact output| on the "
                                         "verification batch", None)
    operations: list[dict[str, Any]] = doc("the merges that made it (merge records: layers, exact, macs_before/after, "
                                           "weight_layers_before/after, measured errors)", factory=list)
    epochs: int = doc("fine-tuning epochs it was trained for (0: not fine-tuned)", 0)
    val_acc_before: Optional[float] = doc("fine-tuned: validation top-1 before fine-tuning", None)
    test_acc_before: Optional[float] = doc("fine-tuned: test top-1 before fine-tuning", None)
    lr: Optional[float] = doc("fine-tuned: its learning rate", None)
    batchnorm: Optional[bool] = doc("fine-tuned: trained with a batch norm after every conv, folded back afterwards "
                                    "(collapse.finetune.batchnorm)", None)
    distill_weight: Optional[float] = doc("fine-tuned: the distillation weight (0: plain cross-entropy)", None)
    distill_temperature: Optional[float] = doc("fine-tuned: the distillation temperature, when distilled", None)
    train_loss: Optional[float] = doc("fine-tuned: training loss of its last epoch", None)
    train_ce_loss: Optional[float] = doc("fine-tuned: its cross-entropy part", None)
    train_distill_loss: Optional[float] = doc("fine-tuned: its distillation part, when distilled", None)
    file: Optional[str] = doc("its torch.export program in the run directory", None)
    onnx_file: Optional[str] = doc("its ONNX file in the run directory (when exported)", None)


@dataclass
class CollapseResult(CollapseReport):
    """The summary's ``collapse`` section (also ``collapse.json`` of ``python -m nepenthe_cli.collapse``): the report,
    then what the run measured on the collapsed model."""

    TOP_LEVEL = True  # collapse.json stands alone
    RENAMED = {2: {"uncollapsed_test_acc": "kept_test_acc"},
               3: {"uncollapsed_test_acc_fp32": "kept_test_acc_fp32", "uncollapsed_val_acc_fp32": "kept_val_acc_fp32"}}

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """Schema 1 timed eager PyTorch only: ``latency_ms`` was {model: {batch: ms}}. Before schema 3 the kept model
        was timed as "uncollapsed"."""
        for key in ("latency_ms", "latency_iqr_ms"):
            timings = data.get(key)
            if version < 2 and timings and not set(timings) & set(RUNTIMES):
                data[key] = timings = {"eager": timings}
            if version < 3 and timings:
                data[key] = {runtime: {("kept" if model == "uncollapsed" else model): ms for model, ms in by.items()}
                             for runtime, by in timings.items()}
        return data

    test_acc: Optional[float] = doc("test top-1 of the collapsed model, in the run's precision", None)
    val_acc: Optional[float] = doc("validation top-1 of the collapsed model", None)
    precision: str = doc("the run's precision (fp32 | bf16)", "fp32")
    relative_diff_run_precision: Optional[float] = doc("reduced-precision runs: collapsed vs kept under the "
                                                       "run's autocast, relative", None)
    test_acc_fp32: Optional[float] = doc("reduced-precision runs: collapsed test top-1 in float32", None)
    val_acc_fp32: Optional[float] = doc("reduced-precision runs: collapsed validation top-1 in float32", None)
    kept_test_acc_fp32: Optional[float] = doc("reduced-precision runs: the kept model's test top-1 in float32", None)
    kept_val_acc_fp32: Optional[float] = doc("reduced-precision runs: the kept model's validation top-1 in float32",
                                             None)
    latency_ms: dict[str, dict[str, dict[str, float]]] = doc(
        "{runtime: {model: {batch_<n>: median ms}}}: runtime eager | compile | onnxruntime, model kept | "
        "bn_folded | collapsed | approximate | finetuned, every pair timed side by side in one process", factory=dict)
    latency_iqr_ms: dict[str, dict[str, dict[str, float]]] = doc("the same keys: p75 - p25 of the timed blocks",
                                                                 factory=dict)
    runtimes: dict[str, str] = doc("{runtime: 'ok' or why it was not measured (not installed, export failed)}",
                                   factory=dict)
    onnx_file: Optional[str] = doc("the collapsed model as ONNX (verified in ONNX Runtime), when exported", None)
    onnx_relative_diff: Optional[float] = doc("ONNX Runtime vs the torch collapsed model on the verification batch, / "
                                              "max |output|; within tolerance, or no onnx_file", None)
    approximate: Optional[ShippedNetwork] = doc("the collapse with approximate (border-ring) merges, when asked "
                                                "(collapse.approximate_merges or merge=approximate)", None)
    finetuned: Optional[ShippedNetwork] = doc("the approximate network (or the exact one) fine-tuned "
                                              "collapse.finetune.epochs epochs, when asked", None)
    latency_repeats: Optional[int] = doc("timed blocks per median, at least", None)
    latency_threads: Optional[int] = doc("CPU threads while timing", None)
    latency_device: Optional[str] = doc("device the latency was measured on", None)
    latency_precision: Optional[str] = doc("precision the latency was measured in", None)
    file: Optional[str] = doc("the collapsed model, a torch.export program: torch.export.load(path).module()", None)
    wall_time_s: Optional[float] = doc("seconds the collapse took in the run: collapse, verification, accuracy, "
                                       "exports and latency in every runtime (torch.compile's compilation included)",
                                       None)
    # python -m nepenthe_cli.collapse adds where the report comes from
    run_dir: Optional[str] = doc("python -m nepenthe_cli.collapse: the run directory collapsed", None)
    round: Optional[int] = doc("python -m nepenthe_cli.collapse: the round collapsed", None)
    kept_test_acc: Optional[float] = doc("python -m nepenthe_cli.collapse: the round's test top-1 before the "
                                         "collapse", None)
    k: Optional[int] = doc("python -m nepenthe_cli.collapse: the round's zero-entropy units", None)
    N: Optional[int] = doc("python -m nepenthe_cli.collapse: the round's units", None)


# ---------------------------------------------------------------------------------------------------------------------
# summary


@dataclass
class RoundBrief(Record):
    """The summary's copy of one round's main numbers (``dense`` and ``kept``)."""

    round: int = doc("the round")
    sparsity: float = doc("as in the round record", 0.0)
    val_acc: float = doc("as in the round record", float("nan"))
    test_acc: Optional[float] = doc("as in the round record", None)
    k: int = doc("as in the round record", 0)
    N: int = doc("as in the round record", 0)
    entropy: dict[str, float] = doc("as in the round record", factory=dict)
    zero_entropy_units: list[str] = doc("as in the round record", factory=list)

    @classmethod
    def of(cls, record: RoundRecord) -> RoundBrief:
        return cls(**{f.name: getattr(record, f.name) for f in dataclasses.fields(cls)})


@dataclass
class TrajectoryPoint(Record):
    """Every round in brief, so that a summary alone (a W&B runs-table export) still holds the curve."""

    sparsity: float = doc("as in the round record", 0.0)
    val_acc: float = doc("as in the round record", float("nan"))
    test_acc: Optional[float] = doc("as in the round record", None)
    k: int = doc("as in the round record", 0)
    N: int = doc("as in the round record", 0)

    @classmethod
    def of(cls, record: RoundRecord) -> TrajectoryPoint:
        return cls(**{f.name: getattr(record, f.name) for f in dataclasses.fields(cls)})


@dataclass
class Costs(Record):
    """The summary's ``cost``: dense, kept and collapsed model, per input."""

    RENAMED = {3: {"final": "kept"}}

    dense: Cost = doc("the dense model", factory=Cost)
    kept: Cost = doc("the kept round's model (masks applied)", factory=Cost)
    collapsed: Optional[Cost] = doc("the collapsed model (absent with collapse.enabled=false)", None)


@dataclass
class RunEstimate(Record):
    """``summary.json`` ``estimate``: the run's wall time foreseen after its first training steps
    (nepenthe/estimate.py), beside the ``wall_time_s`` it really took."""

    seconds_per_batch: float = doc("a training step (forward, backward, optimizer, data) as measured", 0.0)
    batches_timed: int = doc("steps the measurement averaged (after the first two)", 0)
    batch_size: int = doc("training batch size", 0)
    forward_ms_per_image: float = doc("an image passed forward in eval mode (evaluation, probe), as measured", 0.0)
    device: str = doc("where it trains (cpu, cuda)", "")
    dense_s: float = doc("round 0: dense epochs, evaluation and entropy probe", 0.0)
    rounds: int = doc("rounds the stop rule allows (a run may stop earlier)", 0)
    rounds_s: float = doc("all of those rounds: fine-tuning, evaluation, probe", 0.0)
    total_s: float = doc("dense_s + rounds_s (the collapse not included)", 0.0)


@dataclass
class Summary(Record):
    """``summary.json``, written last and atomically: its presence means the run finished."""

    TOP_LEVEL = True
    RENAMED = {3: {"final_round": "kept_round", "final": "kept"}}

    status: str = doc("complete", "complete")
    stop_reason: str = doc("accuracy_drop | max_rounds | target_zero_units | nothing_to_prune", "")
    rounds_completed: int = doc("last round trained", 0)
    kept_round: int = doc("the kept round: the last within stop.max_drop of dense", 0)
    dense: Optional[RoundBrief] = doc("round 0 in brief", None)
    kept: Optional[RoundBrief] = doc("the kept round in brief", None)
    k: int = doc("the kept round's zero-entropy units", 0)
    N: int = doc("units", 0)
    depth: str = doc('"k/N": the papers\' depth metric', "")
    zero_entropy_units: list[str] = doc("the kept round's zero-entropy units", factory=list)
    cost: Costs = doc("cost of the dense, kept and collapsed model", factory=Costs)
    trajectory: dict[str, TrajectoryPoint] = doc("{round: point} for every round", factory=dict)
    collapse: Optional[CollapseResult] = doc("the collapse of the kept model (absent with collapse.enabled=false)",
                                             None)
    config_hash: str = doc("hash of the semantic config", "")
    device: str = doc("training device", "")
    processes: int = doc("processes that ran it (torchrun, srun: N; 1 alone; the last resume's)", 1)
    backend: Optional[str] = doc("torch.distributed backend of a run on several processes (gloo, nccl); null alone",
                                 None)
    wall_time_s: float = doc("seconds of the rounds (training, evaluation, probes; every round, resumes "
                             "included); the collapse's own are collapse.wall_time_s", 0.0)
    estimate: Optional[RunEstimate] = doc("the wall time foreseen after the first training steps (the last attempt's)",
                                          None)
    versions: dict[str, str] = doc("{nepenthe, torch, torchvision}", factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# failures


@dataclass
class FailureStatus(Record):
    """``status.json`` of a sweep job that failed (``error.txt`` beside it holds the traceback when there is one)."""

    TOP_LEVEL = True

    status: str = doc("failed", "failed")
    error: str = doc("the one-line error", "")
    type: str = doc("the exception's class, or the cluster's job state (e.g. CANCELLED, OUT_OF_MEMORY)", "")
    when: str = doc("UTC ISO time it was written", "")
    written_by: str = doc("job (the run itself) | submitter (the sweep saw the job end without a result)", "job")
    job_id: Optional[str] = doc("the cluster job id, when the submitter wrote it", None)


RECORDS = (RoundRecord, Summary, RoundBrief, TrajectoryPoint, Costs, Cost, CollapseResult, ShippedNetwork, RunEstimate,
           FailureStatus)


# ---------------------------------------------------------------------------------------------------------------------
# flat views (W&B) and the generated field tables


def flatten(record: dict, prefix: str = "", sep: str = "/") -> dict:
    """``{"entropy": {"relu": 0.5}}`` -> ``{"entropy/relu": 0.5}`` (W&B charts); lists are left out."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}{sep}", sep))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict, sep: str = "/") -> dict:
    """The inverse of :func:`flatten`: ``{"entropy/relu": 0.5}`` -> ``{"entropy": {"relu": 0.5}}``."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # a scalar and a group under one name: keep the scalar, skip the rest
                break
        else:
            node[leaf] = value
    return nested


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe inside a Markdown table cell would end the cell


def field_tables() -> str:
    """Markdown: one table per record type, its fields, types and docs (what docs/DESIGN.md shows)."""
    parts = []
    for cls in RECORDS:
        own = [f for f in dataclasses.fields(cls)
               if not any(f.name in {g.name for g in dataclasses.fields(base)}
                          for base in cls.__mro__[1:] if dataclasses.is_dataclass(base))]
        bases = [b.__name__ for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)]
        title = f"#### `{cls.__name__}`" + (f" (every field of `{bases[0]}`, then)" if bases else "")
        lines = [title, "", (cls.__doc__ or "").split("\n\n")[0].replace("\n", " ").replace("    ", " ").strip(), "",
                 "| field | type | meaning |", "|---|---|---|"]
        lines += [f"| `{f.name}` | `{f.type}` | {_cell(f.metadata.get('doc', ''))} |" for f in own]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(field_tables())
