"""Cost of a model: MACs (dense and what unstructured sparsity leaves), parameters, depth in weight layers, latency.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2) for one input of the given shape. "Non-zero" MACs scale each
conv/linear layer's MACs by the fraction of its weights that are non-zero: what a sparse kernel would execute, not
what dense PyTorch kernels do (they run every MAC; only collapse removes work for real).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import NepentheError
from .units import WEIGHT_LAYERS


@torch.no_grad()
def layer_macs(model: nn.Module, example_input: Tensor) -> tuple[int, dict[str, int]]:
    """``(total MACs, {module path: MACs})`` for one forward pass of ``example_input`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example_input)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values()) // 2
    per_module = {}
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            # FlopCounterMode names modules by the root class plus the path ("ResidualCNN.layers.0.0.conv1")
            key = f"{type(model).__name__}.{name}" if name else type(model).__name__
            per_module[name] = sum(counts.get(key, {}).values()) // 2
    return total, per_module


def weight_density(module: nn.Module) -> float:
    weight = module.weight.detach()
    return float(torch.count_nonzero(weight)) / weight.numel()


def macs_at_nonzero_weights(model: nn.Module, total: int, per_module: dict[str, int]) -> int:
    """``total`` with every conv/linear layer's share scaled by its fraction of non-zero weights."""
    saved = sum(macs * (1.0 - weight_density(model.get_submodule(name))) for name, macs in per_module.items())
    return int(round(total - saved))


def nonzero_macs(model: nn.Module, example_input: Tensor) -> int:
    """Dense MACs with every conv/linear layer's share scaled by its fraction of non-zero weights."""
    return macs_at_nonzero_weights(model, *layer_macs(model, example_input))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Dense and non-zero parameters; a pruned layer's ``weight_orig`` counts through its masked ``weight``."""
    dense = nonzero = 0
    for module in model.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if name.endswith("_mask") or name in ("running_mean", "running_var", "num_batches_tracked"):
                continue
            if name.endswith("_orig"):
                tensor = getattr(module, name[: -len("_orig")])
            dense += tensor.numel()
            nonzero += int(torch.count_nonzero(tensor.detach()))
    return {"dense": dense, "nonzero": nonzero}


def weight_layers_on_longest_path(model: nn.Module) -> int:
    """Structural depth: the most conv/linear layers any input-to-output path of the traced graph goes through."""
    if isinstance(model, fx.GraphModule):  # already a graph (a collapsed model); re-tracing would lose buffers
        return _longest_path(model, model.graph)
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing fails on data-dependent control flow; say what blocked it
        raise NepentheError(f"torch.fx cannot trace {type(model).__name__}: {exc}") from exc
    return _longest_path(model, graph)


def _longest_path(model: nn.Module, graph: fx.Graph) -> int:
    modules = dict(model.named_modules())
    depth: dict[fx.Node, int] = {}
    for node in graph.nodes:  # fx graphs are topologically ordered
        incoming = max((depth[n] for n in node.all_input_nodes), default=0)
        own = node.op == "call_module" and isinstance(modules.get(node.target), WEIGHT_LAYERS)
        depth[node] = incoming + int(own)
    return max(depth.values(), default=0)


def cost_report(model: nn.Module, example_input: Tensor) -> dict:
    """The cost fields a run summary records for one model (one input of ``example_input``'s shape)."""
    macs, per_module = layer_macs(model, example_input)  # one counted forward pass serves both MAC fields
    params = parameter_counts(model)
    return {
        "macs": macs,
        "macs_nonzero": macs_at_nonzero_weights(model, macs, per_module),
        "params": params["dense"],
        "params_nonzero": params["nonzero"],
        "weight_layers_on_longest_path": weight_layers_on_longest_path(model),
    }


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
