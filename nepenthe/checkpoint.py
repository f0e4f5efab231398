"""Per-round checkpoints that survive a killed job: written atomically, loadable into a fresh model."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from .errors import NepentheError, StorageError
from .pruning.masks import pruned_layer_names
from .tracking import atomic_write_bytes

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"round_(\d{3,})\.pt$")
IN_ROUND_FILE = "in_round.pt"  # the epoch checkpoint of the round in progress (one at a time)
_TEMP = re.compile(r"^\.(round_\d{3,}\.pt|in_round\.pt|rounds\.jsonl|summary\.json|config\.yaml)\.\w+$")  # temps


def checkpoint_path(run_dir: str | Path, round_index: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"round_{round_index:03d}.pt"


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
    return model


def content_hash(state: dict, masks: dict, meta: dict) -> str:
    """SHA-256 over every tensor's bytes (sorted names) and the JSON of the rest (round, records, config): a checkpoint whose bytes were
    damaged inside a weight still unpickles, and only this tells."""
    h = hashlib.sha256()
    for group in (state, masks):
        for name in sorted(group):
            tensor = group[name].detach().cpu().contiguous()
            h.update(name.encode())
            h.update(str(tensor.dtype).encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def save_checkpoint(run_dir: str | Path, round_index: int, model: nn.Module, payload: dict) -> Path:
    state, masks = compact_state(model)
    path = checkpoint_path(run_dir, round_index)
    meta = {"round": round_index, **payload}
    buffer = io.BytesIO()
    torch.save({**meta, "state": state, "masks": masks, "sha256": content_hash(state, masks, meta)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # temp + fsync + rename: the previous checkpoint stays intact
    return path


def in_round_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / IN_ROUND_FILE


def save_in_round(run_dir: str | Path, round_index: int, model: nn.Module, fit_state: dict, identity: dict) -> Path:
    """The round in progress after an epoch: the model's full state (pruning re-parametrisation included, so the
    optimizer's buffers still match its parameters), the fit state, the round and the run's identity. Written
    atomically with a SHA-256 over its bytes; each epoch replaces the previous one."""
    payload = io.BytesIO()
    torch.save({"round": round_index, "config": identity, "model": model.state_dict(), "fit": fit_state}, payload)
    blob = payload.getvalue()
    wrapped = io.BytesIO()
    torch.save({"sha256": hashlib.sha256(blob).hexdigest(), "payload": blob}, wrapped)
    path = in_round_path(run_dir)
    atomic_write_bytes(path, wrapped.getvalue())
    return path


def load_in_round(run_dir: str | Path) -> dict | None:
    """The in-round checkpoint, or None when there is none; a damaged one is an error naming it."""
    path = in_round_path(run_dir)
    if not path.is_file():
        return None
    hint = "delete it and re-run the command to redo this round from its start"
    wrapped = _read(path, hint)
    blob = wrapped.get("payload") if isinstance(wrapped, dict) else None
    if blob is None or hashlib.sha256(blob).hexdigest() != wrapped.get("sha256"):
        raise NepentheError(f"checkpoint {path} is corrupt (its content does not match its SHA-256); {hint}")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


def remove_in_round(run_dir: str | Path) -> None:
    in_round_path(run_dir).unlink(missing_ok=True)


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Half-written temporary files (``.round_002.pt.XXXX``, ``.rounds.jsonl.XXXX``) that a killed process left."""
    run_dir = Path(run_dir)
    stale = [p for folder in (run_dir, run_dir / CHECKPOINT_DIR) if folder.is_dir()
             for p in folder.iterdir() if _TEMP.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path) -> dict:
    """Load and check a checkpoint's content hash; a damaged one is one error naming it and the fallback."""
    path = Path(path)
    fallback = _fallback_hint(path)
    ckpt = _read(path, fallback)
    stored = ckpt.pop("sha256", None) if isinstance(ckpt, dict) else None
    if stored is not None:
        meta = {k: v for k, v in ckpt.items() if k not in ("state", "masks")}
        if content_hash(ckpt["state"], ckpt["masks"], meta) != stored:
            raise NepentheError(f"checkpoint {path} is corrupt (its content does not match its SHA-256); {fallback}")
    return ckpt


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
    previous = checkpoint_path(path.parent.parent, int(match.group(1)) - 1)
    return f"delete it and re-run the command to resume from {previous.name} (the round before)"
