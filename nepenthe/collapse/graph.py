"""torch.fx plumbing shared by the collapse passes: tracing, recorded shapes, module look-up, node surgery."""

from __future__ import annotations

import operator

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import NepentheError

# The ops collapse rewrites. Conv1d/Conv3d and transposed convs are left as they are.
WEIGHT_OPS = (nn.Conv2d, nn.Linear)
# Element-wise functions through which a constant broadcasts against a full tensor.
BROADCASTING = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}


COLLAPSE_PREFIX = "collapsed_"  # buffers collapse adds to a graph


class CollapseError(NepentheError):
    """Collapse could not build a model it can vouch for."""


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported Python, ...
        raise CollapseError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); collapse rewrites the traced "
            f"graph, so the forward must be free of data-dependent control flow"
        ) from exc


def batch_of(example: Tensor, size: int) -> Tensor:
    """``size`` samples of ``example`` (repeated when it has fewer): shapes do not need the whole batch."""
    return example[torch.arange(size, device=example.device) % example.shape[0]]


@torch.no_grad()
def record_shapes(gm: fx.GraphModule, example: Tensor) -> None:
    """Store every node's output shape in ``node.meta['tensor_meta']`` for ``example``'s sample size (batch 2), and in
    ``node.meta['batch']`` how the node's shape follows the batch (dim 0 of the input): ``"first"`` when only its
    dim 0 changes and equals the batch size, ``"none"`` when it does not change, ``"other"`` otherwise (the batch
    sits in another dimension or is flattened into one). Found by propagating batches of 3 and 2."""
    ShapeProp(gm).propagate(batch_of(example, 3))
    at_three = {node: shape(node) for node in gm.graph.nodes}
    ShapeProp(gm).propagate(batch_of(example, 2))
    for node in gm.graph.nodes:
        node.meta["batch"] = batch_dependence(shape(node), at_three.get(node))


def batch_dependence(at_two, at_three) -> str | None:
    if at_two is None or at_three is None:
        return None  # not a tensor (a size, a tuple)
    if tuple(at_two) == tuple(at_three):
        return "none"
    if len(at_two) == len(at_three) and at_two[0] == 2 and at_three[0] == 3 and at_two[1:] == at_three[1:]:
        return "first"
    return "other"


def shape(node: fx.Node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_module(gm: fx.GraphModule, node: fx.Node, types) -> bool:
    return isinstance(module(gm, node), types)


def call_counts(gm: fx.GraphModule) -> dict[str, int]:
    """How many graph nodes call each submodule (a module called twice must not be rewritten for one call)."""
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def exclusive_modules(gm: fx.GraphModule) -> set[str]:
    """Submodules a pass may rewrite: called by exactly one graph node, and none of whose parameters or buffers is
    also reached another way (tied to another module, or read directly as ``F.conv2d(x, self.conv.weight)``).
    Rewriting a shared tensor would silently change its other users."""
    counts = call_counts(gm)
    owners: dict[int, set[str]] = {}
    for name, mod in gm.named_modules(remove_duplicate=False):
        for tensor in own_tensors(mod):
            owners.setdefault(storage(tensor), set()).add(name)
    read_directly = {storage(value) for node in gm.graph.nodes if node.op == "get_attr"
                     for value in [fetch_attr(gm, node.target)] if isinstance(value, Tensor) and value.numel()}
    return {target for target, n in counts.items() if n == 1
            and all(owners[storage(t)] <= {target} and storage(t) not in read_directly
                    for t in own_tensors(gm.get_submodule(target)))}


def own_tensors(mod: nn.Module) -> list[Tensor]:
    return [t for t in (*mod.parameters(recurse=False), *mod.buffers(recurse=False)) if t is not None and t.numel()]


def storage(tensor: Tensor) -> int:
    """Identity of the memory behind a tensor (views of one parameter share it)."""
    return tensor.untyped_storage().data_ptr()


def fetch_attr(gm: fx.GraphModule, target: str):
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def shared_modules(gm: fx.GraphModule) -> list[str]:
    """Weight layers called in the graph that a pass must leave alone (see :func:`exclusive_modules`)."""
    exclusive = exclusive_modules(gm)
    return sorted({n.target for n in weight_nodes(gm)} - exclusive)


def only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def bypass(gm: fx.GraphModule, node: fx.Node) -> None:
    """Remove a one-input node whose output equals its input (identity, dropout in eval)."""
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)


def add_buffer(gm: fx.GraphModule, stem: str, value: Tensor) -> str:
    """Register ``value`` as a new buffer of ``gm`` under a fresh name and return the name."""
    base = COLLAPSE_PREFIX + stem.replace(".", "_")
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.register_buffer(name, value.detach().clone())
    return name


def insert_after(gm: fx.GraphModule, node: fx.Node, op: str, target, args) -> fx.Node:
    with gm.graph.inserting_after(node):
        return gm.graph.create_node(op, target, args)


def tidy(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop dead nodes and unused submodules, check the graph and regenerate ``forward``."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    for name in [n for n, _ in gm.named_buffers(recurse=False)]:
        if not any(node.op == "get_attr" and node.target == name for node in gm.graph.nodes):
            delattr(gm, name)
    return gm


def expand_to_batch(value: Tensor, like: Tensor) -> Tensor:
    """A per-sample constant (batch dim 1) repeated for ``like``'s batch; the constant pass folds it."""
    return value.expand(like.shape[0], *value.shape[1:])


def check_input_size(x: Tensor, expected: tuple) -> Tensor:
    """Guard at the top of a collapsed graph: per-position constants and merge decisions hold for one input size."""
    if tuple(x.shape[1:]) != expected:
        raise CollapseError(
            f"this collapsed model was built and verified for inputs of shape (batch, {', '.join(map(str, expected))}) "
            f"and got {tuple(x.shape)}; collapse again with an example batch of the new size")
    return x


def guard_input_size(gm: fx.GraphModule, example: Tensor) -> None:
    """Route the input through :func:`check_input_size` (the batch size stays free)."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(placeholder):
        guard = gm.graph.call_function(check_input_size, (placeholder, tuple(example.shape[1:])))
    placeholder.replace_all_uses_with(guard, delete_user_cb=lambda user: user is not guard)
    gm.graph.lint()
    gm.recompile()


def weight_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if is_module(gm, n, WEIGHT_OPS)]


def conv_geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """``(kernel, stride, padding)`` per spatial dim, or None for convs kernel composition does not cover."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros" or tuple(conv.dilation) != (1, 1):
        return None
    return tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding)


def dense_conv_weight(conv: nn.Conv2d) -> Tensor:
    """The weight of ``conv`` written as a groups=1 convolution (block-diagonal for grouped convs)."""
    w = conv.weight.detach()
    if conv.groups == 1:
        return w
    out_per, in_per = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = w.new_zeros(conv.out_channels, conv.in_channels, *w.shape[2:])
    for g in range(conv.groups):
        dense[g * out_per:(g + 1) * out_per, g * in_per:(g + 1) * in_per] = w[g * out_per:(g + 1) * out_per]
    return dense


def call_macs(layer: nn.Module, out_shape) -> int:
    """MACs of one conv/linear call producing ``out_shape`` (batch 1)."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return layer.out_channels * (layer.in_channels // layer.groups) * kh * kw * out_shape[-2] * out_shape[-1]
    positions = 1
    for d in out_shape[1:-1]:
        positions *= d
    return layer.in_features * layer.out_features * positions
