"""Save a collapsed model as a torch.export program: reloadable with plain PyTorch, no nepenthe code needed.

    model = torch.export.load("collapsed.pt2").module()
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim

from .graph import CollapseError


def save_collapsed(model: nn.Module, example_input: Tensor, path: str | Path) -> Path:
    """Export ``model`` for ``example_input``'s sample shape with a free batch size; written atomically."""
    path = Path(path)
    batch = Dim("batch", min=1, max=1 << 16)
    try:
        program = torch.export.export(model.eval(), (example_input,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise CollapseError(f"torch.export could not export the collapsed model ({type(exc).__name__}: {exc})") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".pt2")
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_collapsed(path: str | Path) -> nn.Module:
    """The saved collapsed model as a callable module (what ``torch.export.load(path).module()`` returns)."""
    return torch.export.load(str(path)).module()
