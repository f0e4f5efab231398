"""How long a run will take, said after its first training batches rather than discovered after hours.

:class:`BatchClock` times a few training steps (forward, backward, optimizer step, data included) once the first
ones (allocations, lazy initialisation, compilation) are past. :func:`estimate_run` scales that to everything the
run may do: the dense epochs, every round the stop rule allows with its fine-tuning epochs, and the passes that are
forward only (validation and test after every round, the entropy probe), at the forward time per image measured on
one evaluation batch right after (a third of a training step per image when none is measured: backward costs about
twice the forward, but on depthwise networks a forward pass can cost two thirds). The collapse and its latency
measurement at the end are not included. The estimate is an upper bound on the rounds (a run may stop earlier); it
is printed and recorded in ``summary.json`` (``estimate``, :class:`~nepenthe.records.RunEstimate`) beside the wall
time the run really took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .records import RunEstimate

FORWARD_SHARE = 1 / 3  # a forward pass per image, as a share of a training step per image


class BatchClock:
    """Times training steps one by one, from the end of the step before to the end of this one in the same epoch
    (data loading included; nothing between fits, such as evaluation or the probe, is counted). The run's first
    ``warmup`` steps are not timed; the mean of the next ``timed`` step times goes to ``on_measured`` once, with
    how many steps it averaged; every later tick is a no-op."""

    def __init__(self, on_measured: Callable[[float, int], None], *, warmup: int = 2, timed: int = 5,
                 device: torch.device | None = None):
        if warmup < 1 or timed < 1:
            raise ValueError(f"warmup={warmup} and timed={timed} must both be >= 1")
        self.on_measured, self.warmup, self.timed = on_measured, warmup, timed
        self.device = device if device is not None and device.type == "cuda" else None
        self.steps, self.done = 0, False
        self.last: float | None = None
        self.times: list[float] = []

    def epoch_started(self) -> None:
        """A new epoch (or fit) begins: the next step is timed from here, not from the last step of the one before."""
        if not self.done:
            self._sync()
            self.last = time.perf_counter()

    def tick(self) -> None:
        """Called after every training step."""
        if self.done:
            return
        self._sync()
        now = time.perf_counter()
        self.steps += 1
        if self.steps > self.warmup and self.last is not None:
            self.times.append(now - self.last)
            if len(self.times) == self.timed:
                self.done = True
                self.on_measured(sum(self.times) / self.timed, self.timed)
        self.last = now

    def _sync(self) -> None:
        if self.device is not None:  # the step's kernels have run; only until the measurement is taken
            torch.cuda.synchronize(self.device)


@dataclass
class RunWork:
    """What a run may do, in images: the training split per epoch, the epochs of every round (0 = dense), and the
    images passed forward only after every round (validation, test, entropy probe)."""

    train_images: int
    batch_size: int
    round_epochs: list[int]  # [dense epochs, round 1 epochs, ...] up to the stop rule's last round
    forward_images_per_round: int

    @property
    def rounds(self) -> int:
        return len(self.round_epochs) - 1


def estimate_run(work: RunWork, seconds_per_batch: float, batches_timed: int, device: str,
                 forward_per_image: float | None = None) -> RunEstimate:
    """``forward_per_image``: seconds to pass one image forward in eval mode, as measured; None counts a third of a
    training step per image (on depthwise networks a forward pass can cost two thirds: measure it)."""
    per_image = seconds_per_batch / work.batch_size
    if forward_per_image is None:
        forward_per_image = per_image * FORWARD_SHARE
    forward = work.forward_images_per_round * forward_per_image

    def round_s(epochs: int) -> float:
        return epochs * work.train_images * per_image + forward

    dense = round_s(work.round_epochs[0])
    rest = sum(round_s(e) for e in work.round_epochs[1:])
    return RunEstimate(seconds_per_batch=seconds_per_batch, batches_timed=batches_timed, batch_size=work.batch_size,
                       forward_ms_per_image=forward_per_image * 1e3, device=device, dense_s=dense, rounds=work.rounds,
                       rounds_s=rest, total_s=dense + rest)


def estimate_line(estimate: RunEstimate) -> str:
    rounds = f"{estimate.rounds} round{'s' if estimate.rounds != 1 else ''}"
    return (f"estimate: {duration(estimate.total_s)} in all (dense {duration(estimate.dense_s)}, up to {rounds} "
            f"{duration(estimate.rounds_s)}; the collapse not included), from {estimate.seconds_per_batch:.3g} s per "
            f"training batch of {estimate.batch_size} on {estimate.device} (mean of {estimate.batches_timed} steps) "
            f"and {estimate.forward_ms_per_image:.3g} ms per image passed forward")


def duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``1 h 52 min``, ``44 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" if hours >= 10 or minutes == 0 else f"{hours} h {minutes:02d} min"
