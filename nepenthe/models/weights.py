"""Optional starting weights from a local file (no downloads): a state dict, or a checkpoint holding one."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state")


def load_local_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load matching tensors from ``path`` into ``model``; return the keys left at their initial values.

    Tensors whose shape differs (a classifier for another number of classes, a stem for other input channels) are
    skipped and reported, as when fine-tuning ImageNet weights on a smaller dataset; a prefix ``module.`` (DDP) is
    stripped. A file that matches nothing is an error, not a silent no-op.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.kwargs.weights={str(path)!r} is not a file; give the path of a local state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"model.kwargs.weights={str(path)!r} is not a readable torch state dict ({exc})") from exc
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"model.kwargs.weights={str(path)!r} has no tensor matching {type(model).__name__}'s "
                          f"parameter names and shapes (first keys: {', '.join(list(state)[:3])})")
    model.load_state_dict(usable, strict=False)
    return sorted(k for k in own if k not in usable)
