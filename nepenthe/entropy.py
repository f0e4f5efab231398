"""ON/OFF entropy of rectifier neurons, measured with forward hooks.

A neuron is one channel of a conv feature map or one hidden feature of a token/plain tensor. Every scalar of the
activation's *input* ``z`` is ON when ``z > 0`` and OFF when ``z < 0``; exact zeros follow ``zero_state``. The probe
adds per-neuron ON/OFF counts into integer buffers on the model's device, so a pass costs two comparisons and two
reductions per activation and never synchronises with the host until :meth:`EntropyProbe.stats` is called.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .choices import LAYER_MEANS, LAYOUTS, POOLINGS, PROBE_SPLITS, ZERO_STATES
from .distributed import SINGLE, Collective
from .errors import ConfigError, NonFiniteInputError, check_choice
from .inputs import input_mismatch
from .units import Unit, activation_modules, unit_layouts, units_without_rectifier

_LN2 = math.log(2.0)


def binary_entropy(p: Tensor) -> Tensor:
    """Entropy in bits of a Bernoulli(p); exactly 0 at p = 0 and p = 1 (``entr`` defines 0·log 0 = 0)."""
    return (torch.special.entr(p) + torch.special.entr(1.0 - p)) / _LN2


def on_probability(on: Tensor, off: Tensor, zeros: Tensor, zero_state: str) -> Tensor:
    """Fraction of ON among counted states, per neuron; NaN for a neuron with no counted state."""
    on, off, zeros = on.double(), off.double(), zeros.double()
    if zero_state == "on":
        on = on + zeros
    elif zero_state == "off":
        off = off + zeros
    counted = on + off
    return torch.where(counted > 0, on / counted.clamp(min=1.0), torch.full_like(on, math.nan))


def layer_entropy(p_on: Tensor, layer_mean: str) -> Tensor:
    """Mean neuron entropy of a layer, as a 0-dim tensor on ``p_on``'s device (no host sync).

    ``nonconstant`` averages over neurons with 0 < p < 1 and gives 0 when there are none (EGP code);
    ``all`` averages over every neuron, a neuron with no counted state contributing 0 (EASIER code).
    """
    p = torch.nan_to_num(p_on, nan=0.0)
    h = binary_entropy(p)
    if layer_mean == "all":
        return h.mean()
    switching = ((p > 0) & (p < 1)).to(h.dtype)
    return (h * switching).sum() / switching.sum().clamp(min=1.0)


def channel_dim(ndim: int, layout: str) -> int:
    """Which dimension holds the neurons: 1 for channels-first 4-D maps, the last one otherwise."""
    if ndim < 2:
        raise ConfigError(f"activation input has {ndim} dimension(s); expected a batch dimension plus features")
    if layout == "channels_first" or (layout == "auto" and ndim == 4):
        return 1
    return ndim - 1


@dataclass
class LayerStats:
    """What one probe pass learned about one activation."""

    name: str
    p_on: Tensor  # float64 per neuron, on the CPU; NaN where nothing was counted (zero_state=drop, all z == 0)
    entropy: float  # bits
    positions: int  # scalars seen per neuron, zeros included
    neuron_dim: int | None = None  # where the probe found the neurons (None: not recorded, e.g. built by hand)
    input_ndim: int | None = None  # dimensions of the activation input the probe saw

    @property
    def num_neurons(self) -> int:
        return self.p_on.numel()

    @property
    def always_on(self) -> int:
        return int((self.p_on == 1).sum())

    @property
    def always_off(self) -> int:
        return int((self.p_on == 0).sum())

    @property
    def never_counted(self) -> int:
        return int(self.p_on.isnan().sum())

    @property
    def switching(self) -> int:
        return self.num_neurons - self.always_on - self.always_off - self.never_counted

    @property
    def is_zero_entropy(self) -> bool:
        return self.entropy == 0.0

    @property
    def identity_on_probe(self) -> bool:
        """Every neuron was ON (or saw only exact zeros), so a ReLU-like activation acted as the identity."""
        return self.always_on + self.never_counted == self.num_neurons

    def neuron_counts(self) -> dict:
        return {
            "neurons": self.num_neurons,
            "always_on": self.always_on,
            "always_off": self.always_off,
            "switching": self.switching,
        }


@dataclass
class ProbeSettings:
    """How entropy is measured (docs/DESIGN.md steps 1-3), one type for all who say it: the config's ``entropy.*``
    group, a method's reference-code settings (``Method.probe``; ``pruning=<method>`` puts the same values in the
    config) and the library's ``probe=`` arguments."""

    zero_state: str = "off"  # off (EGP code) | on (EASIER code) | drop (NEPENTHE paper)
    layer_mean: str = "nonconstant"  # nonconstant (EGP code) | all (EASIER code)
    pooling: str = "dataset"  # dataset | batch (per-batch values averaged, both reference codes)
    split: str = "train"  # train (no augmentation) | train_aug (the reference codes' training loader) | val | test
    batch_size: Optional[int] = 512  # None: the training batch size (per-batch pooling depends on it)
    max_batches: Optional[int] = None  # None: the whole split

    def check(self) -> ProbeSettings:
        check_choice("entropy.zero_state", self.zero_state, ZERO_STATES)
        check_choice("entropy.layer_mean", self.layer_mean, LAYER_MEANS)
        check_choice("entropy.pooling", self.pooling, POOLINGS)
        check_choice("entropy.split", self.split, PROBE_SPLITS)
        return self


@dataclass
class _Counts:
    """One activation's sums over the pass, on the device: ON and OFF per neuron, per-batch layer entropies, and the
    batches whose input held NaN or Inf (compared neither > 0 nor < 0, NaN would pass for a zero; checked once, in
    ``stats()``, so the pass never waits for the host)."""

    on: Tensor
    off: Tensor
    batch_entropy_sum: Tensor
    nonfinite: Tensor

    @classmethod
    def zeros(cls, shape, device=None) -> _Counts:
        def zeros(size, dtype):
            return torch.zeros(size, dtype=dtype, device=device)

        return cls(zeros(shape, torch.int64), zeros(shape, torch.int64), zeros((), torch.float64),
                   zeros((), torch.int64))


class _Counter:
    """Per-activation accumulators; created lazily on the first batch so the device and width are known."""

    def __init__(self, layout: str):
        self.layout = layout
        self.neuron_dim: int | None = None
        self.input_ndim: int | None = None
        self.counts: _Counts | None = None
        self.positions = 0
        self.batches = 0  # per-batch entropies added (pooling=batch)
        self.seen = 0  # batches seen

    def add(self, z: Tensor, zero_state: str, layer_mean: str, per_batch: bool) -> None:
        cdim = channel_dim(z.dim(), self.layout)
        dims = [d for d in range(z.dim()) if d != cdim]
        positions = z.numel() // z.shape[cdim]
        # Only what zero_state needs is counted: with zeros as OFF, P(ON) = on/positions and the OFF count is
        # implied (likewise for zeros as ON), which halves the hook's memory traffic. int32 partial sums are twice
        # as fast as the default int64 on CPU and exact below 2^31 scalars per neuron per batch.
        if zero_state == "on":
            off = (z < 0).sum(dim=dims, dtype=torch.int32)
            on = positions - off
        else:
            on = (z > 0).sum(dim=dims, dtype=torch.int32)
            off = positions - on if zero_state == "off" else (z < 0).sum(dim=dims, dtype=torch.int32)
        if self.counts is None:
            self.neuron_dim, self.input_ndim = cdim, z.dim()
            self.counts = _Counts.zeros(on.shape, z.device)
        elif self.counts.on.shape != on.shape:
            raise ConfigError(
                f"activation width changed from {self.counts.on.numel()} to {on.numel()} neurons between batches; "
                f"check the layout ({self.layout!r}) of this activation"
            )
        counts = self.counts
        counts.on += on
        counts.off += off
        # NaN propagates to both ends and Inf shows: one cheap pass (isfinite(z).sum() cost twice the counting)
        low, high = torch.aminmax(z)
        counts.nonfinite += ~(torch.isfinite(low) & torch.isfinite(high))
        self.positions += positions
        self.seen += 1
        if per_batch:
            p = on_probability(on, off, positions - on - off, zero_state)
            counts.batch_entropy_sum += layer_entropy(p, layer_mean)
            self.batches += 1


class EntropyProbe:
    """Context manager that hooks activations and accumulates ON/OFF counts of their inputs.

    >>> with EntropyProbe({"relu": model.relu}) as probe:
    ...     model(x)
    >>> probe.stats()["relu"].entropy
    """

    def __init__(self, activations: Mapping[str, nn.Module], settings: ProbeSettings | None = None,
                 layouts: Mapping[str, str] | None = None, collective: Collective = SINGLE):
        self.collective = collective
        settings = (settings or ProbeSettings()).check()
        self.zero_state, self.layer_mean, self.pooling = settings.zero_state, settings.layer_mean, settings.pooling
        layouts = dict(layouts or {})
        for name, layout in layouts.items():
            check_choice(f"layout of {name}", layout, LAYOUTS)
        self.max_batches = settings.max_batches
        self.activations = dict(activations)
        self._counters = {name: _Counter(layouts.get(name, "auto")) for name in self.activations}
        self._handles: list = []

    def __enter__(self) -> EntropyProbe:
        for name, module in self.activations.items():
            self._handles.append(module.register_forward_hook(self._hook(self._counters[name])))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, counter: _Counter):
        per_batch = self.pooling == "batch"

        def hook(module, inputs, output):
            counter.add(inputs[0].detach(), self.zero_state, self.layer_mean, per_batch)

        return hook

    def stats(self) -> dict[str, LayerStats]:
        """What the pass saw; in a distributed run the counts of every process are added first (each saw its own
        batches), so the statistics are those of one process that saw them all."""
        if self.collective.world > 1:
            self._meet_the_other_processes()
        result = {}
        for name, c in self._counters.items():
            counts = c.counts
            if counts is None:
                raise ConfigError(f"activation {name!r} was never called during the probe pass; is it in the model?")
            if self.collective.world > 1:
                scalars = torch.tensor([float(c.positions), float(c.batches), float(c.seen)], dtype=torch.float64)
                self.collective.all_reduce_sum([counts.on, counts.off, counts.batch_entropy_sum, counts.nonfinite,
                                                scalars])
                c.positions, c.batches, c.seen = int(scalars[0]), int(scalars[1]), int(scalars[2])
            if int(counts.nonfinite):
                raise NonFiniteInputError(
                    f"the input of activation {name!r} held NaN or Inf in {int(counts.nonfinite)} of {c.seen} probe "
                    f"batches: the probe batches or the model's weights (a NaN training loss?) are not finite, so "
                    f"its entropy is undefined")
            p_on = on_probability(counts.on, counts.off, c.positions - counts.on - counts.off, self.zero_state)
            if self.pooling == "batch":
                value = counts.batch_entropy_sum / c.batches
            else:
                value = layer_entropy(p_on, self.layer_mean)
            result[name] = LayerStats(name=name, p_on=p_on.cpu(), entropy=float(value), positions=c.positions,
                                      neuron_dim=c.neuron_dim, input_ndim=c.input_ndim)
        return result

    def _meet_the_other_processes(self) -> None:
        """A process that saw none of the batches (fewer probe batches than processes) starts its counters at zero
        with the widths the others saw, so that every process adds the same tensors; an activation no process saw
        stays unseen (the error above, raised by every process)."""
        seen = {name: (tuple(c.counts.on.shape), c.neuron_dim, c.input_ndim) for name, c in self._counters.items()
                if c.counts is not None}
        everyone = self.collective.gather(seen)
        for name, c in self._counters.items():
            shapes = [other[name] for other in everyone if name in other]
            if c.counts is None and shapes:
                shape, c.neuron_dim, c.input_ndim = shapes[0]
                c.counts = _Counts.zeros(shape)


@torch.no_grad()
def measure_entropy(model: nn.Module, activations: Mapping[str, nn.Module], batches: Iterable,
                    settings: ProbeSettings | None = None, *, device: torch.device | str = "cpu",
                    layouts: Mapping[str, str] | None = None, autocast_dtype: torch.dtype | None = None,
                    progress: bool = False, collective: Collective = SINGLE) -> dict[str, LayerStats]:
    """One eval-mode, no-grad pass over ``batches`` (``(x, y)`` pairs or bare inputs; at most
    ``settings.max_batches``); the mode is restored after. ``settings.split`` and ``batch_size`` are for whoever
    builds ``batches``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    probe = EntropyProbe(activations, settings, layouts, collective)
    max_batches = probe.max_batches
    try:
        with probe:
            limited = (b for i, b in enumerate(batches) if max_batches is None or i < max_batches)
            batches = tqdm(collective.my_batches(limited), desc="entropy", leave=False, disable=not progress)
            for i, batch in enumerate(batches):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    if i:
                        model(x)
                        continue
                    try:  # the first batch tells whether the batches fit the model at all
                        model(x)
                    except (RuntimeError, TypeError, ValueError) as exc:
                        raise input_mismatch(model, x, exc) from exc
    finally:
        model.train(was_training)
    return probe.stats()


def probe_units(model: nn.Module, units: list[Unit], batches: Iterable, settings: ProbeSettings | None = None,
                **options) -> dict[str, LayerStats]:
    """Entropy of every unit (:func:`measure_entropy` with the units' layouts; ``options`` go there). A unit whose
    rectifier was replaced by an identity, or removed with its block, is not hooked and counts as a zero-entropy unit
    with every neuron ON."""
    gone = set(units_without_rectifier(model, units))
    live = [u for u in units if u.name not in gone]
    stats = (measure_entropy(model, activation_modules(model, live), batches, settings, layouts=unit_layouts(live),
                             **options) if live else {})
    for name in gone:
        stats[name] = LayerStats(name, torch.ones(0, dtype=torch.float64), 0.0, 0)
    return {u.name: stats[u.name] for u in units}
