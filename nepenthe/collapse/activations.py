"""Turn probe statistics into graph edits on the activations (the method's decision; later passes must preserve it).

A unit with no switching neuron computes a fixed per-neuron linear map on the probed data: ReLU keeps ON neurons
(``z``) and zeroes OFF ones; LeakyReLU keeps ON neurons and scales OFF ones by its slope (linear, not dead). Such a
unit becomes the identity, a per-channel scale folded into the conv/linear before it, or a constant zero. A unit
that still switches keeps its activation, but its always-OFF ReLU neurons emit 0, so their producer rows are zeroed
(later removed by the channel pass).

ReLU6 is not the identity above 6 and GELU is not ``z`` anywhere, and the probe only counts the sign, so replacing
them is an approximation: by default they stay (their always-OFF ReLU6 neurons, exactly 0, are still zeroed), and
``approximate_activations=True`` replaces them and reports the error measured at each unit.

Each decision is also returned as a :class:`Decision`, from which :class:`ReducedActivation` builds the reference
model the graph edits are verified against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ..entropy import LayerStats, channel_dim
from ..units import RECTIFIERS
from .fold import can_scale_channels, scale_output_channels
from .graph import CollapseError, add_buffer, bypass, expand_to_batch, insert_after, module, shape

PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
ZERO_WHEN_OFF = (nn.ReLU, nn.ReLU6)
IDENTITY_WHEN_ON = (nn.ReLU, nn.LeakyReLU)  # exactly z for every z > 0; ReLU6 only up to 6


@dataclass
class Decision:
    """What one unit computes after linearization: ``z · scale`` (identity, scale, zero), ``act(z) · alive``
    (dead channels), or ``act(z)`` (kept); ``neuron_dim`` is where ``scale``/``alive`` apply."""

    action: str
    neuron_dim: int
    scale: Tensor | None = None
    alive: Tensor | None = None
    exact: bool = True  # exact wherever the probe's ON/OFF pattern holds
    reason: str | None = None
    declined: bool = False  # reducible only by an approximation, which was not asked for


class ReducedActivation(nn.Module):
    """A unit as its :class:`Decision` says, written as a module: the reference collapse is checked against."""

    def __init__(self, act: nn.Module, decision: Decision):
        super().__init__()
        self.act, self.decision = act, decision

    def _per_neuron(self, values: Tensor, z: Tensor) -> Tensor:
        view = [1] * z.dim()
        view[self.decision.neuron_dim] = values.numel()
        return values.to(device=z.device, dtype=z.dtype).view(view)

    def forward(self, z: Tensor) -> Tensor:
        d = self.decision
        if d.scale is not None:
            return z * self._per_neuron(d.scale, z)
        out = self.act(z)
        return out * self._per_neuron(d.alive, z) if d.alive is not None else out


def off_slope(act: nn.Module) -> float:
    return float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 0.0


def reduced_scale(act: nn.Module, stats: LayerStats) -> Tensor | None:
    """Per-neuron factor a non-switching unit reduces to, or None when the unit switches or has no linear form."""
    if stats.switching > 0:
        return None
    on = stats.p_on == 1  # NaN (only exact zeros seen) counts as OFF: every rectifier maps 0 to 0
    if isinstance(act, PIECEWISE_LINEAR):
        return torch.where(on, 1.0, off_slope(act)).float()
    if on.all():  # GELU and friends: identity is the EASIER approximation, only when every neuron was ON
        return torch.ones(on.shape)
    return None


def decide(act: nn.Module, stats: LayerStats, neuron_dim: int, approximate: bool) -> Decision:
    """The probe's decision for one unit; approximations only when ``approximate``."""
    scale = reduced_scale(act, stats)
    reason = None
    if scale is not None:
        exact = isinstance(act, IDENTITY_WHEN_ON) or (isinstance(act, ZERO_WHEN_OFF) and not bool((scale == 1).any()))
        if exact or approximate:
            action = "identity" if bool((scale == 1).all()) else "zero" if not bool(scale.any()) else "scale"
            return Decision(action, neuron_dim, scale=scale, exact=exact)
        reason = (f"{type(act).__name__} is not the identity on its whole ON range; "
                  f"approximate_activations=True replaces it and reports the measured error")
    if isinstance(act, ZERO_WHEN_OFF) and stats.always_off + stats.never_counted > 0:
        alive = ~((stats.p_on == 0) | stats.p_on.isnan())
        return Decision("dead_channels", neuron_dim, alive=alive.float(), reason=reason, declined=reason is not None)
    return Decision("kept", neuron_dim, reason=reason, declined=reason is not None)


def unit_neuron_dim(name: str, stats: LayerStats, out_shape, layouts: Mapping[str, str]) -> int:
    """Where the unit's neurons sit: the probe's own record when it has one, checked against ``layouts`` and against
    the number of neurons the statistics hold (a wrong axis would otherwise be scaled silently when sizes agree)."""
    given = layouts.get(name)
    dim = channel_dim(len(out_shape), given or "auto")
    probed = getattr(stats, "neuron_dim", None)
    if probed is not None:
        if stats.input_ndim != len(out_shape):
            raise CollapseError(f"unit {name!r} was probed on {stats.input_ndim}-D inputs but has shape "
                                f"{tuple(out_shape)} in the collapse example; probe and collapse the same inputs")
        if given is not None and dim != probed:
            raise CollapseError(f"unit {name!r} was probed with its neurons in dim {probed} but layouts says "
                                f"{given!r} (dim {dim}); pass the layouts the probe used")
        dim = probed
    if stats.p_on.numel() != out_shape[dim]:
        raise CollapseError(
            f"unit {name!r} has {stats.p_on.numel()} neurons in its statistics but {out_shape[dim]} along dim {dim} "
            f"of its input {tuple(out_shape)}; pass layouts={{{name!r}: 'channels_last' or 'channels_first'}} as "
            f"the probe used")
    return dim


def _producers(gm: fx.GraphModule, nodes: list[fx.Node], dim: int) -> list[fx.Node] | None:
    found = [can_scale_channels(gm, node, dim) for node in nodes]
    return None if any(p is None for p in found) else found


def linearize_activations(gm: fx.GraphModule, stats: Mapping[str, LayerStats], layouts: Mapping[str, str],
                          device: torch.device | None = None, approximate: bool = False
                          ) -> tuple[list[dict], dict[str, Decision]]:
    """Apply each unit's decision to the graph; ``(records, decisions by unit)``. A module called more than once
    gets one decision that holds for every call."""
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in stats and isinstance(module(gm, node), RECTIFIERS):
            calls.setdefault(node.target, []).append(node)  # a module already an identity (EASIER) is left out
    records, decisions = [], {}
    for name, nodes in calls.items():
        act, s = module(gm, nodes[0]), stats[name]
        dims = {unit_neuron_dim(name, s, shape(node), layouts) for node in nodes}
        if len(dims) != 1:
            raise CollapseError(f"unit {name!r} is called on inputs whose neurons sit in different dims {sorted(dims)}")
        dim = dims.pop()
        decision = decide(act, s, dim, approximate)
        record = {"op": "linearize", "unit": name, "always_on": s.always_on, "always_off": s.always_off,
                  "switching": s.switching, "neuron_dim": dim, "exact_on_probe": decision.exact}
        if decision.action == "dead_channels":
            producers = _producers(gm, nodes, dim)
            if producers is None:  # zeroing is only worth it where the channel pass can then remove the rows
                decision = Decision("kept", dim, reason=decision.reason or "the layer before it is not a conv/linear "
                                    "used only here", declined=decision.declined)
            else:
                for producer in producers:
                    scale_output_channels(module(gm, producer), decision.alive)
                record["action"] = "dead_channels_zeroed"
        if decision.scale is not None:
            actions = {_apply_scale(gm, node, decision, device) for node in nodes}
            record["action"] = actions.pop() if len(actions) == 1 else "+".join(sorted(actions))
        if decision.action == "kept":
            record["action"] = "kept"
        if decision.reason:
            record["reason"] = decision.reason
        if decision.declined:
            record["approximation_declined"] = True
        decisions[name] = decision
        records.append(record)
    return records, decisions


def _apply_scale(gm: fx.GraphModule, node: fx.Node, decision: Decision, device) -> str:
    """Replace one call of a non-switching unit by ``z · scale``, in the cheapest exact form."""
    scale, out_shape = decision.scale, shape(node)
    if decision.action == "identity":
        bypass(gm, node)
        return "identity"
    if decision.action == "zero":
        zeros = torch.zeros(1, *out_shape[1:], device=device, dtype=node.meta["tensor_meta"].dtype)
        const = insert_after(gm, node, "get_attr", add_buffer(gm, f"{node.target}_zero", zeros), ())
        full = insert_after(gm, const, "call_function", expand_to_batch, (const, node.args[0]))
        node.replace_all_uses_with(full)
        gm.graph.erase_node(node)
        return "zero"
    producer = can_scale_channels(gm, node, decision.neuron_dim)
    if producer is not None:
        scale_output_channels(module(gm, producer), scale)
        bypass(gm, node)
        return "scale_folded"
    view = [1] * len(out_shape)
    view[decision.neuron_dim] = scale.numel()
    buf = insert_after(gm, node, "get_attr", add_buffer(gm, f"{node.target}_scale", scale.view(view).to(device)), ())
    mul = insert_after(gm, buf, "call_function", torch.mul, (node.args[0], buf))
    node.replace_all_uses_with(mul)
    gm.graph.erase_node(node)
    return "scale"


@torch.no_grad()
def approximation_errors(model: nn.Module, decisions: Mapping[str, Decision], run) -> dict[str, float]:
    """For every inexact decision, max |act(z) − reduced(z)| / max |act(z)| at that unit on the batch ``run()`` feeds
    through ``model`` (the uncollapsed model, activations still in place)."""
    errors, handles = {}, []
    for name, decision in decisions.items():
        if decision.exact:
            continue
        reduced = ReducedActivation(nn.Identity(), decision)

        def hook(mod, inputs, output, name=name, reduced=reduced):
            diff = float((output.double() - reduced(inputs[0]).double()).abs().max())
            scale = float(output.double().abs().max()) or 1.0
            errors[name] = max(errors.get(name, 0.0), diff / scale)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        if handles:
            run()
    finally:
        for handle in handles:
            handle.remove()
    return errors
