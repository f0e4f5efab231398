"""Constant propagation: a layer pruned to 100 % (or a dead unit) emits a constant, and so does everything that only
depends on it. Those nodes are evaluated once and replaced by a buffer where the constant meets the live graph.

Constants are evaluated for one sample of the recorded input size. Zero padding makes a conv of a constant map
position-dependent, so such constants stay per-position maps (exact for the recorded input size); a constant that is
uniform along a dimension is stored with size 1 there when every user still produces its recorded shape by
broadcasting, and a per-channel constant added to a conv or linear output becomes that layer's bias.

Only batch-first constants are folded (the batch in dim 0 of every tensor involved, as the input's): a constant
whose shape carries the batch elsewhere (sequence-first, batch flattened into tokens) raises CollapseError.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor, fx, nn

from .graph import (
    BROADCASTING,
    COLLAPSE_PREFIX,
    WEIGHT_OPS,
    CollapseError,
    add_buffer,
    exclusive_modules,
    expand_to_batch,
    fetch_attr,
    insert_after,
    is_module,
    module,
    only_user,
    shape,
)

FOLDABLE_ADDS = (operator.add, torch.add)  # adds whose constant operand can be folded (not the in-place iadd)


def emits_constant(layer: nn.Module) -> bool:
    return isinstance(layer, WEIGHT_OPS) and not bool(layer.weight.detach().any())


def bias_output(layer: nn.Module, out_shape) -> Tensor:
    """What a layer with all-zero weights outputs for one sample: its bias at every position."""
    value = torch.zeros(1, *out_shape[1:], dtype=layer.weight.dtype, device=layer.weight.device)
    if layer.bias is not None:
        channel_dim = 1 if isinstance(layer, nn.Conv2d) else value.dim() - 1
        view = [1] * value.dim()
        view[channel_dim] = -1
        value = value + layer.bias.detach().view(view)
    return value


def shrink_uniform(value: Tensor) -> Tensor:
    """Collapse every non-batch dimension along which ``value`` does not change to size 1."""
    for dim in range(1, value.dim()):
        first = value.narrow(dim, 0, 1)
        if value.shape[dim] > 1 and torch.equal(value, first.expand_as(value)):
            value = first
    return value


@torch.no_grad()
def constant_values(gm: fx.GraphModule) -> tuple[dict[fx.Node, Tensor], set[fx.Node]]:
    """Value of every node that does not depend on the input, and which of them stand for a batch of activations.

    Seeds of the second kind are layers with all-zero weights and collapse's own constants (``collapsed_*``
    buffers with a batch dimension of 1); what depends on them is a per-sample constant. Constants computed from
    parameters alone (a relative position bias, a mask) have no batch dimension and are left in the graph as they are.
    """
    interpreter = fx.Interpreter(gm)
    values: dict[fx.Node, Tensor] = {}
    batched: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        inputs = node.all_input_nodes
        if node.op == "get_attr":
            values[node] = interpreter.fetch_attr(node.target)
            if node.target.startswith(COLLAPSE_PREFIX) and values[node].dim() > 0 and values[node].shape[0] == 1:
                batched.add(node)
        elif (is_module(gm, node, WEIGHT_OPS) and emits_constant(module(gm, node)) and shape(node) is not None
              and node.meta.get("batch") != "none"):
            check_batch_first(node)
            values[node] = bias_output(module(gm, node), shape(node))
            batched.add(node)
        elif node.target is expand_to_batch and node.args[0] in batched:
            values[node] = values[node.args[0]]  # the batch is spelled out again where the constant is folded
            batched.add(node)
        elif inputs and all(n in values for n in inputs):
            interpreter.env = values
            values[node] = interpreter.run_node(node)
            if any(n in batched for n in inputs):
                batched.add(node)
    return values, batched


def check_batch_first(node: fx.Node) -> None:
    """Constants are evaluated for one sample and re-expanded along dim 0: refuse any other batch placement."""
    if node.meta.get("batch") not in ("first", None):
        raise CollapseError(
            f"collapse cannot fold the constant at node {node.name!r}: its shape {tuple(shape(node))} holds the batch "
            f"in a dimension other than 0 (sequence-first or batch flattened into another dimension); collapse "
            f"folds constants only for batch-first tensors, so keep that layer unpruned or make the model batch-first")


def fits_users(stored: Tensor, node: fx.Node, users: list[fx.Node]) -> bool:
    """Every user, given ``stored`` in place of ``node``, still broadcasts to its recorded shape."""
    for user in users:
        operands = [tuple(stored.shape) if a is node else tuple(shape(a)) if isinstance(a, fx.Node) else ()
                    for a in user.args]
        try:
            if torch.broadcast_shapes(*operands) != tuple(shape(user)):
                return False
        except (RuntimeError, TypeError):  # an operand without a recorded shape
            return False
    return True


def _batch_size_node(gm: fx.GraphModule) -> fx.Node:
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    return insert_after(gm, placeholder, "call_method", "size", (placeholder, 0))


def fold_constants(gm: fx.GraphModule) -> list[dict]:
    values, batched = constant_values(gm)
    done, batch = [], None
    for node, value in values.items():
        if node.op == "get_attr" or node not in batched or not isinstance(value, Tensor):
            continue
        live_users = [u for u in node.users if u not in values]
        if not live_users:
            continue
        removed = [n.target for n in values if n.op == "call_module" and is_module(gm, n, WEIGHT_OPS)
                   and _feeds(n, node)]
        check_batch_first(node)
        broadcasting = all(u.op == "call_function" and u.target in BROADCASTING and shape(u) is not None
                           for u in live_users)
        # the smallest stored form that keeps every user's output shape; else the batch is spelled out
        fitting = next((v for v in (shrink_uniform(value), value) if fits_users(v, node, live_users)),
                       None) if broadcasting else None
        broadcast_only = fitting is not None
        stored = fitting if broadcast_only else value
        const = insert_after(gm, node, "get_attr", add_buffer(gm, f"{node.name}_const", stored), ())
        replacement = const
        if not broadcast_only:  # a view/cat/output needs the batch dimension spelled out
            batch = batch or _batch_size_node(gm)
            replacement = insert_after(gm, const, "call_method", "expand",
                                       (const, batch, *([-1] * (value.dim() - 1))))
        for user in live_users:
            user.replace_input_with(node, replacement)
        done.append({"op": "fold_constant", "node": node.name, "shape": list(stored.shape),
                     "removed_layers": removed, "exact": True})
    gm.graph.eliminate_dead_code()
    done += fold_constant_bias(gm)
    return done


def _feeds(source: fx.Node, target: fx.Node) -> bool:
    """True when ``source`` is ``target`` or one of its ancestors."""
    stack, seen = [target], set()
    while stack:
        n = stack.pop()
        if n is source:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return False


@torch.no_grad()
def fold_constant_bias(gm: fx.GraphModule) -> list[dict]:
    """``layer(x) + c`` with ``c`` one value per output channel becomes ``layer`` with ``c`` added to its bias."""
    done = []
    exclusive = exclusive_modules(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in FOLDABLE_ADDS:
            continue
        if len(node.args) != 2 or node.kwargs:
            continue
        for live, const in (node.args, node.args[::-1]):
            if not (isinstance(live, fx.Node) and isinstance(const, fx.Node) and const.op == "get_attr"):
                continue
            layer = module(gm, live)
            if not isinstance(layer, WEIGHT_OPS) or only_user(live) is not node or live.target not in exclusive:
                continue
            value = fetch_attr(gm, const.target)
            per_channel = _per_channel(value, layer, shape(live))
            if per_channel is None:
                continue
            bias = layer.bias.detach() if layer.bias is not None else 0.0
            layer.bias = nn.Parameter(bias + per_channel.to(layer.weight.dtype))  # a new tensor: nothing shared moves
            node.replace_all_uses_with(live)
            gm.graph.erase_node(node)
            done.append({"op": "fold_constant_into_bias", "layer": live.target, "exact": True})
            break
    return done


def _per_channel(value: Tensor, layer: nn.Module, out_shape) -> Tensor | None:
    """The constant as one value per output channel, or None when it varies along any other dimension."""
    if out_shape is None or value.dim() > len(out_shape):
        return None
    full = [1] * (len(out_shape) - value.dim()) + list(value.shape)
    channel_dim = 1 if isinstance(layer, nn.Conv2d) else len(out_shape) - 1
    channels = out_shape[channel_dim]
    if full[channel_dim] not in (1, channels) or any(s != 1 for d, s in enumerate(full) if d != channel_dim):
        return None
    return value.reshape(-1).expand(channels) if full[channel_dim] == 1 else value.reshape(-1)
