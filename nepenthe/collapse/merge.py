"""Merge chains of conv∘conv or linear∘linear layers that no longer have an activation between them.

A chain is a run of layers where each output goes only into the next layer (optionally through the add of a
constant map left by the constant pass). Residual adds end a chain, so nothing is merged across one.

Linear maps compose exactly: ``W = W2·W1``. Convolutions compose by kernel composition: the kernel of ``conv2∘conv1``
is ``conv_transpose2d(W2, W1, stride=s1)`` (size ``k1 + s1·(k2-1)``, stride ``s1·s2``, padding ``p1 + s1·p2``),
with grouped/depthwise kernels written as dense block-diagonal ones. The constant part of a chain is what it outputs
for a zero input, so biases, BatchNorm shifts and maps are carried exactly, per position where padding makes them so.
The weight part is exact when the second conv never reads its zero padding (``p2 = 0``) or the first conv reads
only padding outside its output range (a 1×1 stride-1 conv); otherwise (k×k∘k×k) the merged conv sees real values
where the chain saw zero padding, and the difference sits on a border ring: each merge measures and reports it.

``merge`` chooses: ``latency`` takes the exact merges that are measured to run faster in the target runtime
(:mod:`.timing`, each decision recorded with both timings); ``cost`` (default) takes merges that lower MACs;
``depth`` (alias ``always``) takes every merge that shortens the chain, also when the merged kernel has more MACs than
the pair (what lowers latency where per-layer overhead dominates; the latency measurement shows whether it pays);
``never`` merges nothing. Only exact merges are taken unless the caller allows inexact ones (``exact_only=False``:
the approximate opt-in, whose network is measured on its own); ``approximate`` is ``cost`` with that opt-in. Every
merge records MACs and the network's weight layers on the longest path before and after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..metrics import weight_layers_on_longest_path
from .constants import FOLDABLE_ADDS, shrink_uniform
from .graph import (
    add_buffer,
    call_macs,
    conv_geometry,
    dense_conv_weight,
    exclusive_modules,
    fetch_attr,
    insert_after,
    module,
    only_user,
    shape,
)
from .timing import SegmentTimer, Span, pays, sample_input

DEPTH_FIRST = ("depth", "always")  # fewest layers, whatever the MACs
LATENCY = "latency"  # the merges that are measured to run faster (timing.py)


@dataclass
class Link:
    node: fx.Node  # the conv/linear call
    map_add: fx.Node | None = None  # ``node + constant buffer`` right after it, if any

    @property
    def out(self) -> fx.Node:
        return self.map_add if self.map_add is not None else self.node


def _kind(gm: fx.GraphModule, node: fx.Node, exclusive: set[str]) -> str | None:
    layer = module(gm, node)
    if node.op != "call_module" or node.target not in exclusive or shape(node) is None:
        return None
    if isinstance(layer, nn.Conv2d) and conv_geometry(layer) is not None and len(shape(node)) == 4:
        return "conv"
    if isinstance(layer, nn.Linear):
        return "linear"
    return None


def _map_add(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """``node + c`` (or ``torch.add(node, c, alpha=a)``) with ``c`` a stored tensor, the sum no larger than ``node``."""
    user = only_user(node)
    if user is None or user.op != "call_function" or user.target not in FOLDABLE_ADDS or len(user.args) != 2:
        return None
    if set(user.kwargs) - {"alpha"}:
        return None  # out= and friends: not modelled, so the chain ends here and the add stays as it is
    if "alpha" in user.kwargs and user.args[0] is not node:
        return None  # torch.add(c, z, alpha=a) scales the layer's output: not a constant shift
    other = user.args[1] if user.args[0] is node else user.args[0]
    if not (isinstance(other, fx.Node) and other.op == "get_attr") or shape(user) != shape(node):
        return None
    return user


def _map_value(gm: fx.GraphModule, add: fx.Node) -> Tensor:
    """What the add contributes: ``alpha · c``."""
    const = next(a for a in add.args if isinstance(a, fx.Node) and a.op == "get_attr")
    return fetch_attr(gm, const.target) * add.kwargs.get("alpha", 1)


def chains(gm: fx.GraphModule) -> list[list[Link]]:
    """Maximal chains of two or more same-kind layers, in graph order."""
    exclusive = exclusive_modules(gm)
    links = {n: Link(n, _map_add(gm, n)) for n in gm.graph.nodes if _kind(gm, n, exclusive)}
    following = {}
    for node, link in links.items():
        user = only_user(link.out)
        if user in links and user.args[0] is link.out and _kind(gm, user, exclusive) == _kind(gm, node, exclusive):
            following[node] = user
    starts = [n for n in links if n in following and n not in following.values()]
    result = []
    for start in starts:
        chain, node = [links[start]], start
        while node in following:
            node = following[node]
            chain.append(links[node])
        result.append(chain)
    return result


@dataclass
class Segment:
    links: list[Link]
    macs_before: int
    macs_after: int
    exact: bool
    geometry: tuple | None = None  # conv: (kernel, stride, padding) of the merged conv


def _segment(gm: fx.GraphModule, links: list[Link]) -> Segment | None:
    """What merging ``links`` would give, or None when the merged layer would not reproduce the recorded shape."""
    layers = [module(gm, link.node) for link in links]
    before = sum(call_macs(layer, shape(link.node)) for layer, link in zip(layers, links))
    first, last = layers[0], layers[-1]
    out_shape = shape(links[-1].node)
    if isinstance(first, nn.Linear):
        return Segment(links, before, call_macs(nn.Linear(first.in_features, last.out_features), out_shape), True)
    (k, s, p), exact = conv_geometry(first), True
    x_size = shape(links[0].node.args[0])[-2:]
    for prev, layer in zip(links, layers[1:]):
        k2, s2, p2 = conv_geometry(layer)
        z_size = shape(prev.node)[-2:]
        for d in range(2):
            reads_only_padding = k[d] - 1 - p[d] < s[d] and s[d] * z_size[d] - p[d] >= x_size[d]
            exact &= p2[d] == 0 or reads_only_padding
        k = tuple(k[d] + s[d] * (k2[d] - 1) for d in range(2))
        p = tuple(p[d] + s[d] * p2[d] for d in range(2))
        s = tuple(s[d] * s2[d] for d in range(2))
    if any((x_size[d] + 2 * p[d] - k[d]) // s[d] + 1 != out_shape[-2 + d] for d in range(2)):
        return None
    after = last.out_channels * first.in_channels * k[0] * k[1] * out_shape[-2] * out_shape[-1]
    return Segment(links, before, after, exact, (k, s, p))


def plan_merges(gm: fx.GraphModule, chain: list[Link], merge: str, exact_only: bool) -> list[Segment]:
    """Best split of ``chain`` into merged segments: fewest MACs (``cost``) or fewest layers (``always``)."""
    n = len(chain)

    def key(option):
        (layers, macs), merged = option
        return (layers, macs) if merge in DEPTH_FIRST else (macs, len(merged))  # ties: merge less

    best: list[tuple | None] = [None] * (n + 1)
    best[0] = ((0, 0), [])
    for end in range(1, n + 1):
        for start in range(end):
            if best[start] is None:
                continue
            (layers, macs), merged = best[start]
            if end - start == 1:
                link = chain[start]
                option = (layers + 1, macs + call_macs(module(gm, link.node), shape(link.node))), merged
            else:
                seg = _segment(gm, chain[start:end])
                if seg is None or (exact_only and not seg.exact):
                    continue
                option = (layers + 1, macs + seg.macs_after), merged + [seg]
            if best[end] is None or key(option) < key(best[end]):
                best[end] = option
    segments = best[n][1]
    return [seg for seg in segments if merge in DEPTH_FIRST or seg.macs_after < seg.macs_before]


def plan_by_latency(gm: fx.GraphModule, chain: list[Link], timer: SegmentTimer
                    ) -> tuple[list[Segment], dict[int, dict], list[dict]]:
    """``merge=latency``: every exact merge of two or more consecutive layers of ``chain`` timed against the same
    layers unmerged (:mod:`.timing`); the non-overlapping merges that pay with the largest summed gain. Returns the
    segments to merge, their timings by ``id(segment)``, and a record of every candidate left unmerged."""
    candidates = []  # (start, end, segment, timings)
    for start in range(len(chain)):
        for end in range(start + 2, len(chain) + 1):
            seg = _segment(gm, chain[start:end])
            if seg is None or not seg.exact:
                continue
            in_shape = shape(seg.links[0].node.args[0])
            merged, constant = merged_layer(gm, seg, in_shape)
            remaining = _attach_constant(merged, constant)
            layers = [module(gm, link.node) for link in seg.links]
            maps = [_map_value(gm, link.map_add) if link.map_add is not None else None for link in seg.links]
            x = sample_input(in_shape, layers[0].weight)
            candidates.append((start, end, seg, timer.compare(Span(layers, maps), Span([merged], [remaining]), x)))
    # weighted interval scheduling over the chain: best[i] is the largest gain from the first i layers
    best: list[tuple[float, list]] = [(0.0, [])] * (len(chain) + 1)
    for i in range(1, len(chain) + 1):
        best[i] = best[i - 1]
        for start, end, seg, timings in candidates:
            if end == i and pays(timings):
                gain = timings["unmerged"]["median"] - timings["merged"]["median"]
                if best[start][0] + gain > best[i][0]:
                    best[i] = (best[start][0] + gain, best[start][1] + [(seg, timings)])
    chosen = best[len(chain)][1]
    taken = {id(seg) for seg, _ in chosen}
    declined = [{"op": "merge_declined", "layers": [link.node.target for link in seg.links],
                 "reason": "overlaps a merge that gains more" if pays(timings) else
                 f"not faster than the unmerged layers beyond the measurements' spread in {timer.runtime}",
                 "latency_ms": timings, "macs_before": seg.macs_before, "macs_after": seg.macs_after}
                for _, _, seg, timings in candidates if id(seg) not in taken]
    return [seg for seg, _ in chosen], {id(seg): timings for seg, timings in chosen}, declined


@torch.no_grad()
def _chain_at_zero(gm: fx.GraphModule, links: list[Link], in_shape) -> Tensor:
    """The chain's output for an all-zero sample: its whole constant part (biases, shifts, maps)."""
    layer0 = module(gm, links[0].node)
    y = torch.zeros(1, *in_shape[1:], dtype=layer0.weight.dtype, device=layer0.weight.device)
    for link in links:
        y = module(gm, link.node)(y)
        if link.map_add is not None:
            y = y + _map_value(gm, link.map_add)
    return y


@torch.no_grad()
def merged_layer(gm: fx.GraphModule, seg: Segment, in_shape) -> tuple[nn.Module, Tensor]:
    """The merged conv/linear (without bias) and the constant its output needs added (input of ``in_shape``)."""
    layers = [module(gm, link.node) for link in seg.links]
    constant = _chain_at_zero(gm, seg.links, in_shape)
    dtype, device = layers[0].weight.dtype, layers[0].weight.device
    if isinstance(layers[0], nn.Linear):
        weight = layers[0].weight.double()
        for layer in layers[1:]:
            weight = layer.weight.double() @ weight
        merged = nn.Linear(layers[0].in_features, layers[-1].out_features, bias=False)
    else:
        weight, stride = dense_conv_weight(layers[0]).double(), layers[0].stride
        for layer in layers[1:]:
            weight = F.conv_transpose2d(dense_conv_weight(layer).double(), weight, stride=stride)
            stride = tuple(a * b for a, b in zip(stride, layer.stride))
        kernel, stride, padding = seg.geometry
        merged = nn.Conv2d(layers[0].in_channels, layers[-1].out_channels, kernel, stride=stride, padding=padding,
                           bias=False)
    merged.weight = nn.Parameter(weight.to(dtype))
    return merged.to(device), constant


def _attach_constant(merged: nn.Module, constant: Tensor) -> Tensor | None:
    """Put a per-channel constant into the bias; return the per-position map still to be added, if any."""
    small = shrink_uniform(constant)
    channels = merged.weight.shape[0]
    per_channel = small.numel() == channels and small.shape[1 if isinstance(merged, nn.Conv2d) else -1] == channels
    if per_channel:
        merged.bias = nn.Parameter(small.reshape(-1).clone())
        return None
    return small


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps the outputs of the nodes asked for (not every activation of the batch)."""

    def __init__(self, gm: fx.GraphModule, wanted: set[fx.Node]):
        super().__init__(gm)
        self.wanted, self.values = wanted, {}

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if node in self.wanted:
            self.values[node] = result
        return result


def merge_chains(gm: fx.GraphModule, merge: str, exact_only: bool, example: Tensor | None = None,
                 timer: SegmentTimer | None = None) -> list[dict]:
    """Merge what ``merge`` allows; with ``example`` (the verification batch) each merge's error is measured.
    ``merge='latency'`` times the candidates with ``timer`` (default :class:`~.timing.SegmentTimer`: ONNX Runtime)
    and takes exact merges only."""
    done: list[dict] = []
    if merge == "never":
        return done
    timings: dict[int, dict] = {}
    declined: list[dict] = []
    if merge == LATENCY:
        planned = []
        for chain in chains(gm):
            segments, chain_timings, chain_declined = plan_by_latency(gm, chain, timer or SegmentTimer())
            planned += segments
            timings.update(chain_timings)
            declined += chain_declined
    else:
        planned = [seg for chain in chains(gm) for seg in plan_merges(gm, chain, merge, exact_only)]
    values = {}
    if planned and example is not None:
        wanted = {n for seg in planned for n in (seg.links[0].node.args[0], seg.links[-1].out)}
        recorder = _Recorder(gm, wanted)
        with torch.no_grad():
            recorder.run(example)
        values = recorder.values
    # fixed before any rewrite: merging one segment re-wires the input of the next one in the same chain
    sources = [(seg.links[0].node.args[0], shape(seg.links[0].node.args[0])) for seg in planned]
    for seg, (source, in_shape) in zip(planned, sources):
        head, tail = seg.links[0], seg.links[-1]
        merged, constant = merged_layer(gm, seg, in_shape)
        record = {"op": "merge", "layers": [link.node.target for link in seg.links], "exact": seg.exact,
                  "macs_before": seg.macs_before, "macs_after": seg.macs_after,
                  "weight_layers_before": _depth(gm)}
        if isinstance(merged, nn.Conv2d):
            record.update(kernel=list(merged.kernel_size), stride=list(merged.stride), padding=list(merged.padding))
        if id(seg) in timings:
            record.update(latency_ms=timings[id(seg)], decision="faster than the unmerged layers beyond the spread")
        remaining_map = _attach_constant(merged, constant)
        if source in values and tail.out in values:
            record.update(_merge_error(merged, remaining_map, values[source], values[tail.out]))
        gm.add_submodule(head.node.target, merged)
        new_out = head.node
        if remaining_map is not None:
            const = insert_after(gm, head.node, "get_attr", add_buffer(gm, f"{head.node.target}_map", remaining_map),
                                 ())
            new_out = insert_after(gm, const, "call_function", torch.add, (head.node, const))
        tail.out.replace_all_uses_with(new_out)
        gm.graph.eliminate_dead_code()
        record["weight_layers_after"] = _depth(gm)
        done.append(record)
    return done + declined


def _depth(gm: fx.GraphModule) -> int:
    return weight_layers_on_longest_path(gm)


@torch.no_grad()
def _merge_error(merged: nn.Module, remaining_map: Tensor | None, x: Tensor, expected: Tensor) -> dict:
    """Max |merged − chain| on the verification batch; for convs also away from the border ring."""
    got = merged(x.to(merged.weight.dtype))
    if remaining_map is not None:
        got = got + remaining_map
    diff = (got.double() - expected.double()).abs()
    scale = float(expected.abs().max()) or 1.0  # an all-zero output: the absolute difference is the relative one
    report = {"max_abs_diff": float(diff.max()), "relative_diff": float(diff.max()) / scale}
    if isinstance(merged, nn.Conv2d) and diff.dim() == 4:
        ring = [math.ceil(p / s) for p, s in zip(merged.padding, merged.stride)]
        inner = diff[..., ring[0]:diff.shape[-2] - ring[0], ring[1]:diff.shape[-1] - ring[1]]
        interior = float(inner.max()) if inner.numel() else 0.0
        report.update(border_width=ring, interior_max_abs_diff=interior, interior_relative_diff=interior / scale)
    return report
