"""Latency of models measured side by side where they run (docs/DESIGN.md step 12): eager PyTorch, ``torch.compile``
and ONNX Runtime (CPU execution provider).

Models are timed in turn, several rounds each, with ``torch.utils.benchmark`` (which synchronises CUDA), so drifting
machine load hits all of them alike; all timed blocks of all rounds are pooled into a median and its p25–p75 spread.
A runtime that cannot run here (ONNX Runtime not installed, a model torch.compile or the ONNX exporter cannot handle)
is skipped with the reason, never silently.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..choices import RUNTIMES
from ..errors import NepentheError
from .export import OnnxRuntimeModel, export_onnx


@contextlib.contextmanager
def _quiet_cpp_extension():
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _benchmark():
    """``torch.utils.benchmark``, imported quietly: its C++ JIT helper imports ``torch.utils.cpp_extension``, which
    logs "No CUDA runtime is found, using CUDA_HOME=..." on every machine with a CUDA toolkit but no GPU; that
    warning concerns building C++ extensions, which nepenthe never does."""
    with _quiet_cpp_extension():
        from torch.utils import benchmark
    return benchmark


@torch.no_grad()
def latency_stats(models: Mapping[str, Callable[[Tensor], Tensor]], sample: Tensor, batch_sizes=(1, 64), *,
                  min_run_time: float = 0.5, rounds: int = 3,
                  threads: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Forward latency in milliseconds, measured side by side: ``{model: {"batch_<n>": {median, p25, p75, n}}}``.

    ``sample`` is one input (batch dimension 1) repeated to each batch size. Models are timed in turn, ``rounds``
    times each with ``torch.utils.benchmark`` (which synchronises CUDA), so drifting machine load hits all of them
    alike; the timed blocks of all rounds are pooled: ``median`` over them, ``p25``/``p75`` their spread, ``n`` how
    many. CPU timings use ``threads`` (default: torch's current setting).
    """
    threads = threads or torch.get_num_threads()
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for model in models.values():
        if isinstance(model, nn.Module):
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


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, NepentheError) else f"{type(exc).__name__}: {text[:300]}"


def runtime_models(models: dict[str, nn.Module], example: Tensor, runtimes=RUNTIMES, *,
                   onnx_dir: str | Path | None = None, threads: int | None = None,
                   onnx_models: dict[str, nn.Module] | None = None) -> tuple[dict[str, Callable], dict[str, str]]:
    """Each model prepared for each runtime: ``({"<runtime>/<model>": callable}, {runtime: "ok" | why not})``.

    ``eager`` is the model itself; ``compile`` is ``torch.compile(model)``, compiled here on ``example``;
    ``onnxruntime``
    exports ``onnx_models[name]`` (the fp32 model; default ``models[name]``) to ``onnx_dir/<name>.onnx`` and runs it
    in ONNX Runtime with ``threads`` intra-op threads. A runtime that fails for one model is skipped for all of them
    (side by side means the same runtimes for every model), with its reason."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise NepentheError(f"collapse.runtimes has unknown runtime(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(RUNTIMES)}")
    prepared, notes = {}, {}
    for runtime in runtimes:
        try:
            ready = {name: _prepare(runtime, name, model, example, onnx_dir, threads, (onnx_models or {}).get(name))
                     for name, model in models.items()}
        except Exception as exc:  # any failure of one runtime must not cost the others their measurement
            notes[runtime] = f"not measured: {_why(exc)}"
            continue
        prepared.update({f"{runtime}/{name}": fn for name, fn in ready.items()})
        notes[runtime] = "ok"
    return prepared, notes


@torch.no_grad()
def _prepare(runtime: str, name: str, model: nn.Module, example: Tensor, onnx_dir, threads, fp32_model):
    if runtime == "eager":
        return model
    if runtime == "compile":
        with _quiet_cpp_extension():
            compiled = torch.compile(model)
            compiled(example[:1])  # compile now, not inside the timed blocks
        return compiled
    if onnx_dir is None:
        raise NepentheError("ONNX Runtime latency needs a folder for the exported files")
    path = export_onnx(fp32_model if fp32_model is not None else model, example[:1], Path(onnx_dir) / f"{name}.onnx")
    return OnnxRuntimeModel(path, threads=threads)


def latency_by_runtime(models: dict[str, nn.Module], sample: Tensor, batch_sizes=(1, 64), runtimes=RUNTIMES, *,
                       onnx_dir: str | Path | None = None, onnx_models: dict[str, nn.Module] | None = None,
                       **timing) -> tuple[dict[str, dict[str, dict[str, dict[str, float]]]], dict[str, str]]:
    """Every model in every runtime timed side by side: ``({runtime: {model: {"batch_<n>": stats}}}, notes)``
    (stats as :func:`latency_stats`; notes as :func:`runtime_models`)."""
    threads = timing.get("threads") or torch.get_num_threads()
    prepared, notes = runtime_models(models, sample, runtimes, onnx_dir=onnx_dir, threads=threads,
                                     onnx_models=onnx_models)
    flat = latency_stats(prepared, sample, batch_sizes, **timing)
    nested: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for key, per_batch in flat.items():
        runtime, name = key.split("/", 1)
        nested.setdefault(runtime, {})[name] = per_batch
    return nested, notes
