"""A request to stop training at the next batch boundary, so that a job leaving early loses at most a few batches.

A cluster tells a job it must go with a signal: Slurm (through submitit) sends ``SIGUSR2`` before a time limit or a
preemption it will requeue, and ``SIGTERM`` when it preempts, cancels or kills the job. A handler (installed by the
command line, ``nepenthe_cli/signals.py``) only records the request; training checks it after every batch
(:func:`requested`), saves the round in progress there and raises :class:`StopRequested`, and the command line then
lets the job go (requeued by submitit, or exiting). The library installs no handler itself.
"""

from __future__ import annotations

import signal

from .errors import NepentheError

_pending: int | None = None  # the signal that asked to stop, not yet honoured


class StopRequested(NepentheError):
    """Training stopped at a batch boundary because a signal asked it to; its state is saved."""

    def __init__(self, signum: int, where: str):
        self.signum, self.where = signum, where
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")


def request(signum: int) -> None:
    """Ask training to stop at the next batch boundary (what a signal handler calls)."""
    global _pending
    _pending = signum


def requested() -> int | None:
    """The signal that asked to stop, or None; in a distributed run, any rank's request counts on every rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import torch

        flag = torch.tensor([_pending or 0], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
    return _pending


def clear() -> None:
    global _pending
    _pending = None


def _collective_device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
