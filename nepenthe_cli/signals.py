"""What a job does when the cluster asks it to go (nepenthe.interrupt holds the request; this module is the glue).

``SIGUSR2`` (Slurm, ``signal_delay_s`` before a time limit or on preemption, through submitit) and ``SIGTERM``
(preemption, ``scancel``, a node going down) only record the request; training stops at the next batch boundary and
saves its place (``checkpoints/in_round.pt``: the batch, the optimizer, the RNG streams). Then :func:`leave` lets the
job go: under submitit, ``SIGUSR2`` goes on to submitit's own handler, which requeues the job (the requeued job
resumes at that batch); otherwise the process exits with 128 + the signal's number, and the same command resumes.
"""

from __future__ import annotations

import signal
import sys

from nepenthe import interrupt

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
_previous: dict[int, object] = {}


def install() -> None:
    """Record SIGUSR2 and SIGTERM as stop requests; keep the handlers they replace (submitit's, in a cluster job)."""
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is not _record:
            _previous[signum] = current
        signal.signal(signum, _record)


def _record(signum, frame) -> None:
    interrupt.request(signum)


def leave(stop: interrupt.StopRequested, where: str) -> None:
    """After the run saved its place: hand SIGUSR2 to submitit (which requeues the job and exits), else exit."""
    name = signal.Signals(stop.signum).name
    print(f"{stop}; saved {where}: the job resumes there when it is requeued, or when the same command runs again",
          file=sys.stderr, flush=True)
    previous = _previous.get(stop.signum)
    if stop.signum == signal.SIGUSR2 and callable(previous):
        previous(stop.signum, None)  # submitit's checkpoint_and_try_requeue: requeues, then exits
    sys.exit(128 + stop.signum if name else 1)
