"""Latency of models measured side by side where they run (docs/DESIGN.md step 12).

Models are timed in turn, several rounds each, with ``torch.utils.benchmark`` (which synchronises CUDA), so drifting
machine load hits all of them alike; all timed blocks of all rounds are pooled into a median and its p25–p75 spread.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn


def _benchmark():
    """``torch.utils.benchmark``, imported quietly: its C++ JIT helper imports ``torch.utils.cpp_extension``, which
    logs "No CUDA runtime is found, using CUDA_HOME=..." on every machine with a CUDA toolkit but no GPU; that
    warning concerns building C++ extensions, which nepenthe never does."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        log.setLevel(level)
    return benchmark


@torch.no_grad()
def latency_stats(models: dict[str, nn.Module], sample: Tensor, batch_sizes=(1, 64), *, min_run_time: float = 0.5,
                  rounds: int = 3, threads: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Forward latency in milliseconds, measured side by side: ``{model: {"batch_<n>": {median, p25, p75, n}}}``.

    ``sample`` is one input (batch dimension 1) repeated to each batch size. Models are timed in turn, ``rounds``
    times each with ``torch.utils.benchmark`` (which synchronises CUDA), so drifting machine load hits all of them
    alike; the timed blocks of all rounds are pooled: ``median`` over them, ``p25``/``p75`` their spread, ``n`` how
    many. CPU timings use ``threads`` (default: torch's current setting).
    """
    threads = threads or torch.get_num_threads()
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for model in models.values():
        model.eval()
    for batch in batch_sizes:
        x = sample[:1].expand(batch, *sample.shape[1:]).contiguous()
        if sample.dim() == 4 and sample.is_contiguous(memory_format=torch.channels_last) and sample.shape[1] > 1:
            x = x.contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                model(x)  # warm-up: lazy init, allocator, cudnn autotune
                timer = _benchmark().Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
                times[name] += timer.blocked_autorange(min_run_time=min_run_time).times
        for name, seconds in times.items():
            p25, median, p75 = np.quantile(np.asarray(seconds) * 1e3, [0.25, 0.5, 0.75])
            results[name][f"batch_{batch}"] = {"median": float(median), "p25": float(p25), "p75": float(p75),
                                               "n": len(seconds)}
    return results


def latency_ms(models: dict[str, nn.Module], sample: Tensor, batch_sizes=(1, 64),
               **kwargs) -> dict[str, dict[str, float]]:
    """The medians of :func:`latency_stats`: ``{model: {"batch_<n>": ms}}``."""
    stats = latency_stats(models, sample, batch_sizes, **kwargs)
    return {name: {key: s["median"] for key, s in per_batch.items()} for name, per_batch in stats.items()}
