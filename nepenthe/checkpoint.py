"""Per-round checkpoints that survive a killed job: written atomically, loadable into a fresh model."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from .errors import NepentheError
from .pruning.masks import pruned_layer_names

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"round_(\d{3,})\.pt$")


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


def save_checkpoint(run_dir: str | Path, round_index: int, model: nn.Module, payload: dict) -> Path:
    state, masks = compact_state(model)
    path = checkpoint_path(run_dir, round_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)
    os.close(fd)
    try:
        torch.save({"round": round_index, "state": state, "masks": masks, **payload}, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise NepentheError(f"checkpoint {path} is unreadable ({exc!r}); delete it to resume from the one before") from exc
