"""Cost of a model: MACs (dense and what unstructured sparsity leaves), parameters, depth in weight layers, latency.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2) for one input of the given shape. "Non-zero" MACs scale each
conv/linear layer's MACs by the fraction of its weights that are non-zero: what a sparse kernel would execute, not
what dense PyTorch kernels do (they run every MAC; only collapse removes work for real). Latency is measured where a
model runs: ``nepenthe.collapse.measure``.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import NepentheError
from .pruning.masks import weight_of
from .records import Cost
from .units import WEIGHT_LAYERS


@torch.no_grad()
def macs_by_module(model: nn.Module, example_input: Tensor) -> tuple[int, dict[str, int]]:
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
    weight = weight_of(module).detach()
    return float(torch.count_nonzero(weight)) / weight.numel()


def macs_at_nonzero_weights(model: nn.Module, total: int, per_module: dict[str, int]) -> int:
    """``total`` with every conv/linear layer's share scaled by its fraction of non-zero weights."""
    saved = sum(macs * (1.0 - weight_density(model.get_submodule(name))) for name, macs in per_module.items())
    return int(round(total - saved))


def nonzero_macs(model: nn.Module, example_input: Tensor) -> int:
    """Dense MACs with every conv/linear layer's share scaled by its fraction of non-zero weights."""
    return macs_at_nonzero_weights(model, *macs_by_module(model, example_input))


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


def cost_report(model: nn.Module, example_input: Tensor) -> Cost:
    """The cost a run summary records for one model (one input of ``example_input``'s shape)."""
    macs, per_module = macs_by_module(model, example_input)  # one counted forward pass serves both MAC fields
    params = parameter_counts(model)
    return Cost(macs=macs, macs_nonzero=macs_at_nonzero_weights(model, macs, per_module), params=params["dense"],
                params_nonzero=params["nonzero"], weight_layers_on_longest_path=weight_layers_on_longest_path(model))
