"""Merges chosen by measured latency (``collapse.merge=latency``): which merges pay depends on the runtime, not on
MACs (a fully linear inverted-residual block composes into one dense 3×3 conv that is cheaper than the three when the
block is narrow, and dearer when it is wide), so each candidate is timed where the network will run.

A chain's candidate segments are timed in isolation, as LayerMerge builds its latency tables: the span of layers as
they are (each layer with its constant map) against the one merged layer that replaces them, on one input of the
recorded shape at batch 1, exported to ONNX and run in ONNX Runtime (or eager / compiled PyTorch) with the run's
threads, interleaved over several rounds so drifting load hits both alike. A candidate pays when it beats the same
span unmerged by more than the spread of the two measurements (p25–p75 widths added): a tie leaves the layers as
they were. Of the candidates that pay, the non-overlapping ones with the largest summed gain in median latency are
taken (``merge.plan_by_latency``). Only exact merges are candidates; every kept merge is verified like any other
step, and the decision and both timings are recorded.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..choices import RUNTIMES
from .graph import CollapseError
from .measure import latency_stats, runtime_models


class Span(nn.Module):
    """Layers applied in turn, each followed by its constant map when it has one: a chain as the graph runs it."""

    def __init__(self, layers: list[nn.Module], maps: list[Tensor | None]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        for i, value in enumerate(maps):
            self.register_buffer(f"map{i}", value)  # None: no map after this layer

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            value = getattr(self, f"map{i}")
            if value is not None:
                x = x + value
        return x


@dataclass
class SegmentTimer:
    """How candidate merges are timed: the runtime (ONNX Runtime by default), the CPU threads (None: the run's
    setting), and per candidate ``rounds`` interleaved measurements of ``min_run_time`` seconds each."""

    runtime: str = "onnxruntime"
    threads: int | None = None
    min_run_time: float = 0.1
    rounds: int = 3

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise CollapseError(f"collapse.merge_runtime={self.runtime!r} is not valid; choose one of "
                                f"{', '.join(RUNTIMES)}")

    def compare(self, unmerged: nn.Module, merged: nn.Module, example: Tensor) -> dict[str, dict[str, float]]:
        """``{"unmerged": stats, "merged": stats}`` in milliseconds at batch 1 (stats: median, p25, p75, n)."""
        models = {"unmerged": unmerged.eval(), "merged": merged.eval()}
        with tempfile.TemporaryDirectory(prefix="nepenthe-merge-") as folder:
            prepared, notes = runtime_models(models, example[:1], [self.runtime], onnx_dir=Path(folder),
                                             threads=self.threads)
            if notes[self.runtime] != "ok":
                raise CollapseError(f"collapse merge=latency cannot time candidate merges in {self.runtime}: "
                                    f"{notes[self.runtime]}; choose another collapse.merge_runtime or merge=cost")
            stats = latency_stats(prepared, example[:1], (1,), min_run_time=self.min_run_time, rounds=self.rounds,
                                  threads=self.threads)
        return {name.split("/", 1)[1]: per_batch["batch_1"] for name, per_batch in stats.items()}


def pays(timings: dict[str, dict[str, float]]) -> bool:
    """The merged layer is faster than the span it replaces by more than the two measurements' spread."""
    merged, unmerged = timings["merged"], timings["unmerged"]
    noise = (merged["p75"] - merged["p25"]) + (unmerged["p75"] - unmerged["p25"])
    return unmerged["median"] - merged["median"] > noise


@torch.no_grad()
def sample_input(shape_: torch.Size, like: Tensor) -> Tensor:
    """One random input of the recorded shape (batch 1): latency does not depend on the values."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, *shape_[1:], generator=generator, dtype=torch.float32).to(like.device, like.dtype)
