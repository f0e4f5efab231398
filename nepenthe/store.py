"""Where a run keeps its checkpoints, behind one interface: :class:`DirStore` (files that survive a killed job) and
:class:`MemoryStore` (a run without a directory). Every store saves a checkpoint per completed round and offers the
round in progress an epoch-checkpoint object (:meth:`Store.epoch_checkpoints`), so training code never asks which
kind of store it has.

Files of a :class:`DirStore` (``RUN_DIR/checkpoints/``, named by :class:`~nepenthe.rundir.RunDir`):
  ``round_NNN.pt``  weights with masks applied, boolean masks, every round record so far, the run's identity, and a
                    SHA-256 over all of it (a damaged weight still unpickles; only the hash tells);
  ``in_round.pt``   the round in progress after its last completed epoch (or at the batch where a requeue signal
                    stopped it): full model state, optimizer, scheduler, RNG streams; replaced by the round
                    checkpoint when the round completes.
All are written to a temporary file, fsynced and renamed.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.nn.utils import prune

from .atomic import atomic_write_bytes
from .config import config_diff
from .errors import ConfigError, NepentheError, StorageError
from .pruning.masks import keep_masked_weights_current, pruned_layer_names
from .records import RoundRecord
from .rundir import RunDir
from .units import replace_by_identity

_NAME = re.compile(r"^round_(\d{3,})\.pt$")


@dataclass
class Checkpoint:
    """One completed round: the model's weights (masks applied) and masks, and the records up to that round."""

    round: int
    state: dict
    masks: dict
    records: list[RoundRecord]
    config: dict  # the run's identity (its semantic config), checked before resuming


class EpochCheckpoints(Protocol):
    """What a round's training saves after each epoch and restores when the round is resumed."""

    def save(self, model: nn.Module, fit_state: dict) -> None: ...

    def restore(self, model: nn.Module) -> dict | None: ...  # the fit state to continue from, or None


class Store(Protocol):
    def save(self, round_index: int, model: nn.Module, records: list[RoundRecord], identity: dict) -> None: ...

    def load(self, round_index: int) -> Checkpoint: ...

    def latest(self) -> Checkpoint | None: ...

    def epoch_checkpoints(self, round_index: int, identity: dict, on_restore=None) -> EpochCheckpoints: ...


def check_same_run(saved_config: dict | None, identity: dict, where) -> None:
    """Refuse to resume what a run of another config wrote."""
    diffs = config_diff(saved_config or {}, identity) if saved_config is not None else []
    if diffs:
        raise ConfigError(f"{where} holds a run of another config ({'; '.join(diffs)}); use another output_root "
                          f"or resume=false to start it over", "output_root")


# ---------------------------------------------------------------------------------------------------------------------
# model state


def compact_state(model: nn.Module) -> tuple[dict, dict]:
    """Weights with masks applied plus boolean masks: a third of the size of ``weight_orig`` + float ``weight_mask``."""
    state = dict(model.state_dict())
    masks = {}
    for layer in pruned_layer_names(model):
        orig, mask = state.pop(f"{layer}.weight_orig"), state.pop(f"{layer}.weight_mask")
        state[f"{layer}.weight"] = orig * mask
        masks[layer] = mask.bool()
    return state, masks


def load_compact_state(model: nn.Module, state: dict, masks: dict) -> nn.Module:
    """Load into a model without pruning re-parametrisation and re-attach the masks."""
    model.load_state_dict(state)
    for layer, mask in masks.items():
        prune.custom_from_mask(model.get_submodule(layer), "weight", mask.to(model.get_submodule(layer).weight.device))
    if masks:
        keep_masked_weights_current(model)
    return model


def restore_model(model: nn.Module, ckpt: Checkpoint) -> nn.Module:
    """``model`` (a fresh one of the run's architecture) with a checkpoint's weights, masks and identity swaps."""
    replace_by_identity(model, ckpt.records[-1].replaced_by_identity)  # first: the state holds no swapped module
    return load_compact_state(model, ckpt.state, ckpt.masks)


def content_hash(state: dict, masks: dict, meta: dict) -> str:
    """SHA-256 over every tensor's bytes (sorted names) and the JSON of the rest (round, records, config)."""
    h = hashlib.sha256()
    for group in (state, masks):
        for name in sorted(group):
            tensor = group[name].detach().cpu().contiguous()
            h.update(name.encode())
            h.update(str(tensor.dtype).encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# files


def save_checkpoint(run_dir: str | Path, round_index: int, model: nn.Module, records: list[RoundRecord],
                    identity: dict) -> Path:
    state, masks = compact_state(model)
    meta = {"round": round_index, "records": [r.to_dict() for r in records], "config": identity}
    buffer = io.BytesIO()
    torch.save({**meta, "state": state, "masks": masks, "sha256": content_hash(state, masks, meta)}, buffer)
    path = RunDir(run_dir).checkpoint(round_index)
    atomic_write_bytes(path, buffer.getvalue())  # temp + fsync + rename: the previous checkpoint stays intact
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and check a checkpoint's content hash; a damaged one is one error naming it and the fallback."""
    path = Path(path)
    fallback = _fallback_hint(path)
    raw = _read(path, fallback)
    if not isinstance(raw, dict) or "state" not in raw:
        raise NepentheError(f"checkpoint {path} is not a nepenthe checkpoint; {fallback}")
    stored = raw.pop("sha256", None)
    meta = {k: v for k, v in raw.items() if k not in ("state", "masks")}
    if stored is not None and content_hash(raw["state"], raw["masks"], meta) != stored:
        raise NepentheError(f"checkpoint {path} is corrupt (its content does not match its SHA-256); {fallback}")
    return Checkpoint(raw["round"], raw["state"], raw["masks"], [RoundRecord.from_dict(r) for r in raw["records"]],
                      raw.get("config", {}))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    folder = RunDir(run_dir).checkpoints
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return max(found)[1] if found else None


def save_in_round(run_dir: str | Path, round_index: int, model: nn.Module, fit_state: dict, identity: dict) -> Path:
    """The round in progress: the model's full state (pruning re-parametrisation included, so the optimizer's buffers
    still match its parameters), the fit state, the round and the run's identity; hashed, atomic."""
    payload = io.BytesIO()
    torch.save({"round": round_index, "config": identity, "model": model.state_dict(), "fit": fit_state}, payload)
    blob = payload.getvalue()
    wrapped = io.BytesIO()
    torch.save({"sha256": hashlib.sha256(blob).hexdigest(), "payload": blob}, wrapped)
    path = RunDir(run_dir).in_round
    atomic_write_bytes(path, wrapped.getvalue())
    return path


def load_in_round(run_dir: str | Path) -> dict | None:
    """The in-round checkpoint, or None when there is none; a damaged one is an error naming it."""
    path = RunDir(run_dir).in_round
    if not path.is_file():
        return None
    hint = "delete it and re-run the command to redo this round from its start"
    wrapped = _read(path, hint)
    blob = wrapped.get("payload") if isinstance(wrapped, dict) else None
    if blob is None or hashlib.sha256(blob).hexdigest() != wrapped.get("sha256"):
        raise NepentheError(f"checkpoint {path} is corrupt (its content does not match its SHA-256); {hint}")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


def _read(path: Path, hint: str):
    """``torch.load`` of a checkpoint file; any failure is one error naming the file and ``hint``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except OSError as exc:
        raise StorageError(f"checkpoint {path} is unreadable ([Errno {exc.errno}] {exc.strerror}); {hint}") from exc
    except Exception as exc:
        raise NepentheError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); {hint}") from exc


def _fallback_hint(path: Path) -> str:
    match = _NAME.search(path.name)
    if match is None or int(match.group(1)) == 0:
        return "delete it and re-run the command to redo that round"
    previous = RunDir(path.parent.parent).checkpoint(int(match.group(1)) - 1)
    return f"delete it and re-run the command to resume from {previous.name} (the round before)"


# ---------------------------------------------------------------------------------------------------------------------
# stores


class InRoundFile:
    """The epoch checkpoints of one round of a :class:`DirStore`: :meth:`save` after every epoch (or at a requeue
    signal), :meth:`restore` when the run restarts inside this round."""

    def __init__(self, run_dir: Path, round_index: int, identity: dict, on_restore=None):
        self.run_dir, self.round_index, self.identity, self.on_restore = run_dir, round_index, identity, on_restore

    def save(self, model: nn.Module, fit_state: dict) -> None:
        save_in_round(self.run_dir, self.round_index, model, fit_state, self.identity)

    def restore(self, model: nn.Module) -> dict | None:
        saved = load_in_round(self.run_dir)
        if saved is None or saved["round"] != self.round_index:
            return None  # none, or left over from a round that completed
        check_same_run(saved["config"], self.identity, RunDir(self.run_dir).in_round)
        model.load_state_dict(saved["model"])
        if self.on_restore is not None:
            self.on_restore(self.round_index, saved["fit"], str(RunDir(self.run_dir).in_round))
        return saved["fit"]


class DirStore:
    """Checkpoints in ``run_dir/checkpoints``: a killed run resumes after its last completed round, and inside the
    round in progress after its last epoch checkpoint."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def save(self, round_index: int, model: nn.Module, records: list[RoundRecord], identity: dict) -> None:
        save_checkpoint(self.run_dir, round_index, model, records, identity)
        RunDir(self.run_dir).in_round.unlink(missing_ok=True)  # the round is complete: its epoch checkpoint goes

    def load(self, round_index: int) -> Checkpoint:
        return load_checkpoint(RunDir(self.run_dir).checkpoint(round_index))

    def latest(self) -> Checkpoint | None:
        RunDir(self.run_dir).remove_temp_files()
        path = latest_checkpoint(self.run_dir)
        return None if path is None else load_checkpoint(path)

    def epoch_checkpoints(self, round_index: int, identity: dict, on_restore=None) -> InRoundFile:
        return InRoundFile(self.run_dir, round_index, identity, on_restore)

    def __str__(self) -> str:
        return str(self.run_dir)


class FollowerStore(DirStore):
    """A distributed run's process other than 0: reads process 0's checkpoints (to resume, to reload the kept round)
    and writes nothing."""

    def save(self, round_index: int, model: nn.Module, records: list[RoundRecord], identity: dict) -> None:
        pass

    def latest(self) -> Checkpoint | None:
        path = latest_checkpoint(self.run_dir)  # no clean-up of temporary files: that is process 0's
        return None if path is None else load_checkpoint(path)

    def epoch_checkpoints(self, round_index: int, identity: dict, on_restore=None) -> InRoundFile:
        return _ReadOnlyInRound(self.run_dir, round_index, identity, on_restore)


class _ReadOnlyInRound(InRoundFile):
    def save(self, model: nn.Module, fit_state: dict) -> None:
        pass


class NoEpochCheckpoints:
    """A :class:`MemoryStore` round: nothing survives the process, so nothing is saved or restored."""

    def save(self, model: nn.Module, fit_state: dict) -> None:
        pass

    def restore(self, model: nn.Module) -> None:
        return None


class MemoryStore:
    """Checkpoints kept in memory for a run without a directory (every round: with ``stop.continue_past_drop`` the
    kept round may lie several rounds back). Nothing to resume from."""

    def __init__(self):
        self.saved: dict[int, Checkpoint] = {}

    def save(self, round_index: int, model: nn.Module, records: list[RoundRecord], identity: dict) -> None:
        state, masks = compact_state(model)
        self.saved[round_index] = Checkpoint(round_index, {k: v.detach().clone() for k, v in state.items()},
                                             {k: v.clone() for k, v in masks.items()}, copy.deepcopy(records),
                                             copy.deepcopy(identity))

    def load(self, round_index: int) -> Checkpoint:
        return self.saved[round_index]

    def latest(self) -> Checkpoint | None:
        return None

    def epoch_checkpoints(self, round_index: int, identity: dict, on_restore=None) -> NoEpochCheckpoints:
        return NoEpochCheckpoints()

    def __str__(self) -> str:
        return "memory"
