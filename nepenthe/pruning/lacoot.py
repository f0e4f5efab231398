"""LaCoOT (Quétu, Liao, Hezbri, Pizzati, Tartaglione; arXiv 2406.08933, ICCV 2025; docs/DESIGN.md step 11).

Training adds ``λ · mean over units of MSWD(unit input, unit output)`` to the cross-entropy (:class:`TransportLoss`):
the max-sliced Wasserstein distance of :func:`nepenthe.max_sliced_wasserstein` between the batch of inputs and the
batch of outputs of each unit, one flattened sample per point, fresh random directions every step, nothing detached.
Then units are replaced by identities one per round, in order of their validation MSWD (``by_val_mswd``, smallest
first) or deepest first, as long as validation accuracy stays within ``stop.max_drop`` of dense; the kept model is the
longest such prefix of removals, and the collapse runs on it as for every method.

A unit is a module replaced by ``nn.Identity`` on removal; its distance compares that module's input with the output
of ``output`` (the module itself by default). Presets follow the reference code (VGCQ/LaCoOT):
  ResNet-18        the blocks after the first of each stage (``layerX.1``: its hooks pair consecutive ``relu2``
                   outputs); nepenthe's compact CNN, whose stages hold one block, offers those with an identity shortcut
  MobileNetV2      the depthwise Conv-BN-ReLU6 ``features[i].conv[1]`` of every stride-1 expanding block (13 on CIFAR)
  Swin-T           every block: block input vs the MLP branch's output before its residual add; the whole block goes
Any model names its own: ``units=["blocks.3", ["blocks.4", "blocks.4.mlp"], ...]``.

Deliberate differences from the reference, each a quirk of its code: the last partial batch is not reshaped to the
full batch size (the reference's ``reshape(batch_size, -1)`` mixes samples there); MobileNetV2's removal maps unit i
to the i-th depthwise layer (the reference's mapping is shifted by one and never removes ``features[2]``); Swin-T is
ranked by validation MSWD like MobileNetV2 (the reference ranks it by |z-score| + percentile, not monotone in the
distance); the validation MSWD is measured on the kept model after training with directions from a fixed seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torchvision
from torch import Tensor, nn

from ..choices import ORDERS
from ..distributed import SINGLE, Collective
from ..errors import ConfigError, bad_option
from ..units import find_module
from ..wasserstein import max_sliced_wasserstein
from .methods import Method, PruningPlan
from .registry import register_method


@dataclass(frozen=True)
class TransportUnit:
    """``module`` is replaced by ``nn.Identity`` on removal; the distance compares its input with ``output``'s output
    (``output`` defaults to ``module``: input vs output of the same block)."""

    module: str
    output: str | None = None

    @property
    def compared(self) -> str:
        return self.output or self.module


def parse_units(spec) -> list[TransportUnit]:
    """``["a", ["b", "b.mlp"], TransportUnit(...)]`` → units; anything else is one error naming the entry."""
    units = []
    for entry in spec:
        if isinstance(entry, TransportUnit):
            units.append(entry)
        elif isinstance(entry, str):
            units.append(TransportUnit(entry))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
            units.append(TransportUnit(entry[0], entry[1]))
        else:
            raise ConfigError(f"pruning.units entry {entry!r} is not valid; give a module path (input vs output of "
                              f"that module) or a pair [module replaced on removal, module whose output is compared]")
    return units


# ---------------------------------------------------------------------------------------------------------------------
# presets


def _resnet_later_blocks(model: torchvision.models.ResNet) -> list[TransportUnit]:
    return [TransportUnit(f"layer{s}.{b}") for s in range(1, 5) for b in range(1, len(getattr(model, f"layer{s}")))]


def _mobilenet_depthwise(model: torchvision.models.MobileNetV2) -> list[TransportUnit]:
    units = []
    for i, block in enumerate(model.features):
        convs = getattr(block, "conv", None)
        if convs is None or len(convs) != 4:  # features[1] (expand ratio 1) has no expanding conv before its dw
            continue
        if isinstance(convs[1], nn.Identity):  # removed in an earlier round: still one of the units
            units.append(TransportUnit(f"features.{i}.conv.1"))
            continue
        depthwise = convs[1][0]
        if depthwise.stride == (1, 1) and depthwise.groups == depthwise.in_channels == depthwise.out_channels:
            units.append(TransportUnit(f"features.{i}.conv.1"))
    return units


def _swin_blocks(model: torchvision.models.SwinTransformer) -> list[TransportUnit]:
    # a stage is a Sequential of blocks with an MLP; a block removed in an earlier round (an identity) stays a unit
    return [TransportUnit(f"features.{s}.{b}", f"features.{s}.{b}.mlp") for s, stage in enumerate(model.features)
            if isinstance(stage, nn.Sequential) and any(hasattr(block, "mlp") for block in stage)
            for b in range(len(stage))]


def preset_units(model: nn.Module) -> list[TransportUnit]:
    """The reference's units for the families it covers (see the module docstring); a model may also declare them
    with a ``transport_units()`` method."""
    declared = getattr(model, "transport_units", None)
    if callable(declared):
        return parse_units(declared())
    for kind, units in ((torchvision.models.ResNet, _resnet_later_blocks),
                        (torchvision.models.MobileNetV2, _mobilenet_depthwise),
                        (torchvision.models.SwinTransformer, _swin_blocks)):
        if isinstance(model, kind):
            return units(model)
    raise ConfigError(f"LaCoOT has no unit preset for {type(model).__name__}; name the blocks to remove with "
                      f"pruning.units=[path, ...] (or [module, output] pairs)")


# ---------------------------------------------------------------------------------------------------------------------
# the regulariser


class _Capture:
    """Forward hooks keeping each unit's input and compared output of the last forward pass (with their graph)."""

    def __init__(self, model: nn.Module, units: list[TransportUnit]):
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.handles = []
        for unit in units:
            compared = find_module(model, unit.compared)
            if compared is None:
                raise ConfigError(f"LaCoOT unit {unit.module!r} compares the output of {unit.compared!r}, which is not "
                                  f"a module of {type(model).__name__}")
            self.handles.append(model.get_submodule(unit.module).register_forward_pre_hook(self._keep_input(unit)))
            self.handles.append(compared.register_forward_hook(self._keep_output(unit)))

    def _keep_input(self, unit):
        def hook(module, args):
            self.inputs[unit.module] = args[0]
        return hook

    def _keep_output(self, unit):
        def hook(module, args, output):
            self.outputs[unit.module] = output
        return hook

    def take(self, unit: TransportUnit) -> tuple[Tensor, Tensor]:
        try:
            source, target = self.inputs.pop(unit.module), self.outputs.pop(unit.module)
        except KeyError:
            raise ConfigError(f"LaCoOT unit {unit.module!r} was not called in the forward pass; is it in the model?") \
                from None
        if source.shape != target.shape:
            raise ConfigError(f"LaCoOT unit {unit.module!r} maps {tuple(source.shape[1:])} to "
                              f"{tuple(target.shape[1:])}: only a unit whose output has its input's shape can be "
                              f"replaced by an identity; name another unit")
        return source, target

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def unit_distances(capture: _Capture, units: list[TransportUnit], n_projections: int, p: float,
                   generator: torch.Generator | None = None) -> list[Tensor]:
    """MSWD of each unit for the batch just forwarded (float32 whatever the autocast)."""
    distances = []
    for unit in units:
        source, target = capture.take(unit)
        distances.append(max_sliced_wasserstein(source.float().flatten(1), target.float().flatten(1),
                                                n_projections=n_projections, p=p, generator=generator))
    return distances


class TransportLoss:
    """``λ · mean over live units of MSWD(input, output)`` for the last forward pass (a
    :class:`~nepenthe.engine.LossTerm`). Directions are drawn from the global torch generator, as the reference's
    ``seed=None`` does; a run's per-round seeding makes them reproducible."""

    def __init__(self, units: list[TransportUnit], lambda_reg: float, n_projections: int, p: float):
        self.units, self.lambda_reg, self.n_projections, self.p = units, lambda_reg, n_projections, p
        self.capture: _Capture | None = None
        self.live: list[TransportUnit] = []

    def attach(self, model: nn.Module) -> None:
        # a unit already replaced by an identity compares a tensor with itself: nothing to learn, and sqrt(0) has no
        # gradient; only the units still in the model take part
        self.live = [u for u in self.units if not isinstance(find_module(model, u.module), (nn.Identity, type(None)))]
        self.capture = _Capture(model, self.live)

    def detach(self) -> None:
        if self.capture is not None:
            self.capture.remove()
        self.capture = None

    def __call__(self) -> Tensor:
        if not self.live:
            raise ConfigError("LaCoOT has no unit left to regularise; every unit was replaced by an identity")
        if self.capture is None:
            raise ConfigError("the LaCoOT term is not attached to a model: call term.attach(model) before term()")
        distances = unit_distances(self.capture, self.live, self.n_projections, self.p)
        return self.lambda_reg * torch.stack(distances).mean()


# ---------------------------------------------------------------------------------------------------------------------
# the method


@dataclass(frozen=True)
class LacootOptions:
    lambda_reg: float = 5.0  # weight of the transport regulariser (the reference: 5 for ResNet-18 on CIFAR-10)
    n_projections: int = 50  # random directions per MSWD (POT's default)
    p: float = 2.0  # the Wasserstein order
    units: Sequence | None = None  # None: the model's preset; else module paths or [module, output] pairs
    order: str = "by_val_mswd"  # by_val_mswd | deepest_first
    finetune_epochs: int = 0  # fine-tuning after each removal (the reference: none)


@register_method("LaCoOT", "tab:red", uses_ratio=False, rank=4,
                 regularises_dense=lambda options: float(options.lambda_reg) > 0)
class Lacoot(Method):
    """LaCoOT: trains with :class:`TransportLoss`, then replaces one unit per round by the identity (no weight
    pruning), ordered by validation MSWD (or deepest first), while validation accuracy stays within
    ``stop.max_drop`` of dense.

    At most one round per unit (``stop.max_rounds`` caps it further); the kept model is the longest prefix of
    removals within ``stop.max_drop`` points of dense; each removal is fine-tuned ``finetune_epochs`` epochs (0, as
    the reference; ``finetune.*`` sets the schedule)."""

    name = "lacoot"
    Options: type = LacootOptions
    MEASURE_SEED = 20_406_089  # the validation MSWD's random directions: fixed, so records reproduce

    def __init__(self, ratio: float = 0.5, **options):
        self.ratio = ratio  # unused: LaCoOT prunes no weights
        self.options = self.make_options(options)
        o = self.options
        lambda_reg, n_projections, p, order, finetune_epochs = (o.lambda_reg, o.n_projections, o.p, o.order,
                                                                o.finetune_epochs)
        if not (isinstance(lambda_reg, (int, float)) and lambda_reg >= 0):
            raise bad_option("pruning.lambda_reg", lambda_reg, "must be >= 0 (the reference uses 0.1 to 9)")
        if not (isinstance(n_projections, int) and n_projections >= 1):
            raise bad_option("pruning.n_projections", n_projections, "must be a positive integer (POT's default: 50)")
        if not (isinstance(p, (int, float)) and p >= 1):
            raise bad_option("pruning.p", p, "must be >= 1 (the reference uses 2)")
        if order not in ORDERS:
            raise bad_option("pruning.order", order, f"is not valid; choose one of {', '.join(ORDERS)}")
        if not (isinstance(finetune_epochs, int) and finetune_epochs >= 0):
            raise bad_option("pruning.finetune_epochs", finetune_epochs, "must be >= 0 (the reference: 0)")
        self.lambda_reg, self.n_projections, self.p = float(lambda_reg), n_projections, float(p)
        self.finetune = finetune_epochs
        self.order = order
        self.declared = parse_units(o.units) if o.units else None

    def units(self, model: nn.Module) -> list[TransportUnit]:
        units = self.declared if self.declared is not None else preset_units(model)
        if not units:
            raise ConfigError(f"LaCoOT found no unit to remove in {type(model).__name__}; name them with "
                              f"pruning.units=[path, ...]")
        for unit in units:
            if find_module(model, unit.module) is None:
                raise ConfigError(f"LaCoOT unit {unit.module!r} is not a module of {type(model).__name__}")
        return units

    def check(self, model: nn.Module) -> None:
        self.units(model)

    def loss_term(self, model: nn.Module) -> TransportLoss | None:
        """The regulariser while a unit is left to regularise (none once every unit is an identity, or λ = 0)."""
        units = self.units(model)
        if not self.lambda_reg or all(isinstance(find_module(model, u.module), nn.Identity) for u in units):
            return None
        return TransportLoss(units, self.lambda_reg, self.n_projections, self.p)

    @torch.no_grad()
    def measure(self, model: nn.Module, batches, device, collective: Collective = SINGLE) -> dict:
        """``val_mswd``: each live unit's MSWD averaged over the batches (as the reference's validation pass); the
        processes of ``collective`` each add their share of the batches."""
        live = [u for u in self.units(model)
                if not isinstance(find_module(model, u.module), (nn.Identity, type(None)))]
        if not live:
            return {"val_mswd": {}}
        was_training = model.training
        model.eval()
        capture = _Capture(model, live)
        generator = torch.Generator().manual_seed(self.MEASURE_SEED)
        sums, count = torch.zeros(len(live), dtype=torch.float64), 0
        try:
            for i, batch in enumerate(batches):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                # the directions of batch i are the i-th draws, whichever process evaluates it
                distances = unit_distances(capture, live, self.n_projections, self.p, generator)
                if i % collective.world != collective.rank:
                    continue
                sums += torch.stack([d.double().cpu() for d in distances])
                count += 1
        finally:
            capture.remove()
            model.train(was_training)
        totals = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64)])
        collective.all_reduce_sum([totals])
        return {"val_mswd": {u.module: float(v) for u, v in zip(live, totals[:-1] / max(float(totals[-1]), 1.0))}}

    def removal_order(self, model: nn.Module, history: Sequence) -> list[str]:
        names = [u.module for u in self.units(model)]
        if self.order == "deepest_first":
            return names[::-1]
        distances = history[0].method_stats.get("val_mswd", {}) if history else {}
        missing = [n for n in names if n not in distances]
        if missing:
            raise ConfigError(f"LaCoOT orders units by the dense model's validation MSWD, which was not measured for "
                              f"{', '.join(missing)}")
        return sorted(names, key=lambda n: (distances[n], names.index(n)))  # ties: model order

    def plan(self, model, units, stats, history=()) -> PruningPlan:
        removed = set(history[-1].replaced_by_identity) if history else set()
        remaining = [n for n in self.removal_order(model, history) if n not in removed]
        return PruningPlan(identities=remaining[:1])

    def stop_rule(self, stop, model: nn.Module):
        return replace(stop, max_rounds=min(stop.max_rounds, len(self.units(model))))

    def finetune_epochs(self, configured: int) -> int:
        return self.finetune  # after a removal: none by default, as the reference
