"""One run across several processes with torch.distributed (data parallel): ``torchrun --nproc_per_node=N train.py
...``, or ``srun`` under Slurm. NCCL on GPUs, Gloo on CPU.

What is split and what is not:
  training   every global batch (``train.batch_size``) is split evenly across the processes, gradients are averaged
             by ``DistributedDataParallel`` (batch norm synchronised with ``hardware.sync_batchnorm``), so N processes
             train what one process would with the same global batch;
  evaluation and the entropy probe: whole batches are dealt round-robin and the sums (correct, loss; ON/OFF counts,
             per-batch entropies) are added across processes before anything is computed from them: the same numbers
             as one process on the same images;
  the plan   is computed once (process 0) and sent to every process; the masks it leaves are compared across
             processes after every round (a difference is an error naming the processes);
  records, checkpoints, W&B and the collapse: process 0 only; a resumed run reads process 0's files, with any N.
All of it goes through one object, a :class:`Collective`, handed to whoever needs it (the engine in its
``TrainingPlan``, the probe, a method's ``measure``, the round loop): :data:`SINGLE` does nothing, so code written for
one process is the code every process runs; :func:`join` returns the one for this process.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError, NepentheError


class DistributedError(NepentheError):
    """A process of a distributed run stopped, or the processes disagree."""


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int


class Collective:
    """One process alone: every operation is a no-op (its value returned as it is)."""

    rank, world, backend = 0, 1, None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self) -> Shard | None:
        """Which part of each global batch this process trains (None: all of it)."""
        return None

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Add each tensor across processes, in place (same shapes and dtypes everywhere)."""

    def broadcast(self, value, source: int = 0):
        """``value`` as process ``source`` has it, on every process (any picklable object)."""
        return value

    def gather(self, value) -> list:
        """Every process's ``value``, in rank order."""
        return [value]

    def my_batches(self, batches: Iterable) -> Iterable:
        """The batches this process evaluates: every world-th one, from its rank on."""
        return batches

    def broadcast_buffers(self, model: torch.nn.Module, source: int = 0) -> None:
        """Every buffer (batch norm's running statistics) as process ``source`` holds it, in place."""

    def check_same(self, what: str, tensors: dict[str, torch.Tensor]) -> None:
        """Raise when the processes hold different ``tensors``."""

    def outcome(self, action, *args):
        """Run ``action`` on process 0 and share how it went: its value on every process, or its error raised on
        every process (so the others do not wait for a process that gave up)."""
        return action(*args)

    def split_batch_size(self, batch_size: int) -> int:
        return batch_size

    def wrapper(self, device: torch.device, sync_batchnorm: bool):
        """What ``engine.fit`` trains through (None: the model itself)."""
        return None

    def peer_failure(self, exc: BaseException, where) -> DistributedError | None:
        """The one error to report when ``exc`` says another process went away, or None."""
        return None

    def describe(self) -> str:
        return "1 process"


SINGLE = Collective()


class ProcessGroup(Collective):
    """This process in torch.distributed's default process group (torchrun, srun)."""

    def __init__(self):
        if not active():
            raise DistributedError("no torch.distributed process group with more than one process is initialised")
        self.rank, self.world, self.backend = dist.get_rank(), dist.get_world_size(), dist.get_backend()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            moved = t.to(self._device())
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved.to(t.device))

    def broadcast_buffers(self, model: torch.nn.Module, source: int = 0) -> None:
        # DDP hands process 0's buffers to the others before each forward, so after the last step of an epoch each
        # process holds statistics updated by its own batches; without this, a sharded evaluation would score each
        # shard with a slightly different model, and none of them the one process 0 saves
        for buffer in model.buffers():
            moved = buffer.to(self._device())
            dist.broadcast(moved, src=source)
            buffer.copy_(moved.to(buffer.device))

    def my_batches(self, batches: Iterable) -> Iterable:
        for i, batch in enumerate(batches):
            if i % self.world == self.rank:
                yield batch

    def broadcast(self, value, source: int = 0):
        box = [value if self.rank == source else None]
        dist.broadcast_object_list(box, src=source, device=self._device() if self.backend == "nccl" else None)
        return box[0]

    def gather(self, value) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def check_same(self, what: str, tensors: dict[str, torch.Tensor]) -> None:
        digest = hashlib.sha256()  # compared by a SHA-256 of their bytes
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digests = self.gather(digest.hexdigest())
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise DistributedError(f"the processes disagree on {what}: rank(s) {', '.join(map(str, differ))} differ "
                                   f"from rank 0; they must hold the same model (was a process started with another "
                                   f"config or checkpoint?)")

    def outcome(self, action, *args):
        result, error = None, None
        if self.is_main:
            try:
                result = action(*args)
            except Exception as exc:  # whatever it is, the other processes must not wait for it
                error = exc
        shared = self.broadcast((result, None if error is None else (type(error).__name__, str(error),
                                                                      isinstance(error, NepentheError))))
        if error is not None:
            raise error
        if shared[1] is not None:
            kind, message, ours = shared[1]
            raise DistributedError(message if ours else f"process 0 failed: {kind}: {message}")
        return shared[0]

    def split_batch_size(self, batch_size: int) -> int:
        """This process's part of a global batch; the global batch must split evenly."""
        if batch_size % self.world:
            raise ConfigError(f"train.batch_size={batch_size} (the global batch) must divide evenly across the "
                              f"{self.world} processes; use a multiple of {self.world}")
        return batch_size // self.world

    def wrapper(self, device: torch.device, sync_batchnorm: bool):
        def wrap(model: torch.nn.Module) -> torch.nn.Module:
            from torch.nn.parallel import DistributedDataParallel

            if sync_batchnorm:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)

        return wrap

    def peer_failure(self, exc: BaseException, where) -> DistributedError | None:
        text = " ".join(str(exc).split())
        transport = isinstance(exc, getattr(dist, "DistError", ())) or any(
            word in text for word in ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe"))
        if not (isinstance(exc, RuntimeError) and transport):
            return None
        reason = text.split("] ", 1)[-1].split(". ")[0][:160]
        return DistributedError(f"process {self.rank} of {self.world}: another process of this distributed run "
                                f"stopped ({reason}); the last checkpoints are in {where}: run the same command again "
                                f"to resume (with any number of processes)")

    def describe(self) -> str:
        return f"{self.world} processes ({self.backend})"


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> Collective:
    """The collective of this process as it stands: its process group when one is initialised, else SINGLE."""
    return ProcessGroup() if active() else SINGLE


def join(device: str) -> Collective:
    """Join the process group a distributed launch (torchrun, srun) describes, and return this process's collective
    (:data:`SINGLE` outside such a launch)."""
    init_from_environment(device)
    return current()


def _environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, else from srun's (a Slurm step with N tasks)."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        if "MASTER_ADDR" not in os.environ:  # the first node of the step, a port from the job id
            nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                                   capture_output=True, text=True, check=True).stdout.split()
            os.environ["MASTER_ADDR"] = nodes[0]
            os.environ["MASTER_PORT"] = str(20_000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20_000)
        return (int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]),
                int(os.environ.get("SLURM_LOCALID", 0)))
    return None


def init_from_environment(device: str, timeout_s: float = 600.0) -> bool:
    """Join the process group a distributed launch describes (no-op, False, when there is none)."""
    if active():
        return True
    found = _environment()
    if found is None or found[1] <= 1:
        return False
    rank_, world_, local = found
    os.environ.setdefault("RANK", str(rank_))
    os.environ.setdefault("WORLD_SIZE", str(world_))
    use_nccl = device in ("cuda", "auto") and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local)  # "cuda" then means this process's GPU
    dist.init_process_group("nccl" if use_nccl else "gloo", rank=rank_, world_size=world_,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def restore_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``convert_sync_batchnorm`` in place: every SyncBatchNorm back to BatchNorm2d with the same tensors (the
    collapse folds BatchNorm2d, and checkpoints keep their class)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.SyncBatchNorm):
            plain = torch.nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
            plain.weight, plain.bias = module.weight, module.bias
            plain.running_mean, plain.running_var = module.running_mean, module.running_var
            plain.num_batches_tracked = module.num_batches_tracked
            plain.train(module.training)
            model.set_submodule(name, plain)
    return model
