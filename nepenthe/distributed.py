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
Outside a distributed launch every function here is a no-op, and nothing else in nepenthe needs to know.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from .errors import ConfigError, NepentheError


class DistributedError(NepentheError):
    """A process of a distributed run stopped, or the processes disagree."""


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard() -> Shard | None:
    return Shard(rank(), world()) if active() else None


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


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Add each tensor across processes, in place (same shapes and dtypes everywhere)."""
    if not active():
        return
    for t in tensors:
        moved = t.to(_device())
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        t.copy_(moved.to(t.device))


def broadcast_buffers(model: torch.nn.Module, source: int = 0) -> None:
    """Every buffer (batch norm's running statistics) as process ``source`` holds it, in place on every process.
    DDP hands process 0's buffers to the others before each forward, so after the last step of an epoch each process
    holds statistics updated by its own batches; without this, a sharded evaluation would score each shard with a
    slightly different model, and none of them the one process 0 saves."""
    if not active():
        return
    for buffer in model.buffers():
        moved = buffer.to(_device())
        dist.broadcast(moved, src=source)
        buffer.copy_(moved.to(buffer.device))


def own_batches(batches: Iterable) -> Iterable:
    """The batches this process evaluates: every world-th one, from its rank on (all of them when alone)."""
    if not active():
        yield from batches
        return
    r, w = rank(), world()
    for i, batch in enumerate(batches):
        if i % w == r:
            yield batch


def broadcast(value, source: int = 0):
    """``value`` as process ``source`` has it, on every process (any picklable object)."""
    if not active():
        return value
    box = [value if rank() == source else None]
    dist.broadcast_object_list(box, src=source, device=_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def gather(value) -> list:
    """Every process's ``value``, in rank order (``[value]`` when alone)."""
    if not active():
        return [value]
    out = [None] * world()
    dist.all_gather_object(out, value)
    return out


def check_same(what: str, tensors: dict[str, torch.Tensor]) -> None:
    """Raise when the processes hold different ``tensors`` (compared by a SHA-256 of their bytes)."""
    if not active():
        return
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests = gather(digest.hexdigest())
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise DistributedError(f"the processes disagree on {what}: rank(s) {', '.join(map(str, differ))} differ "
                               f"from rank 0; they must hold the same model (was a process started with another "
                               f"config or checkpoint?)")


def outcome(action, *args):
    """Run ``action`` on process 0 and share how it went: its value on every process, or its error raised on every
    process (so the others do not wait for a process that gave up)."""
    if not active():
        return action(*args)
    result, error = None, None
    if is_main():
        try:
            result = action(*args)
        except Exception as exc:  # whatever it is, the other processes must not wait for it
            error = exc
    shared = broadcast((result, None if error is None else (type(error).__name__, str(error),
                                                             isinstance(error, NepentheError))))
    if error is not None:
        raise error
    if shared[1] is not None:
        kind, message, ours = shared[1]
        raise DistributedError(message if ours else f"process 0 failed: {kind}: {message}")
    return shared[0]


def peer_failure(exc: BaseException, where) -> DistributedError | None:
    """The one error to report when ``exc`` says another process of this run went away (a collective whose peer
    died: Gloo's connection reset, an NCCL failure), or None for anything else."""
    text = " ".join(str(exc).split())
    transport = isinstance(exc, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe"))
    if not (active() and isinstance(exc, RuntimeError) and transport):
        return None
    reason = text.split("] ", 1)[-1].split(". ")[0][:160]
    return DistributedError(f"process {rank()} of {world()}: another process of this distributed run stopped "
                            f"({reason}); the last checkpoints are in {where}: run the same command again to resume "
                            f"(with any number of processes)")


def split_batch_size(batch_size: int) -> int:
    """This process's part of a global batch; the global batch must split evenly."""
    if batch_size % world():
        raise ConfigError(f"train.batch_size={batch_size} (the global batch) must divide evenly across the "
                          f"{world()} processes; use a multiple of {world()}")
    return batch_size // world()


def wrapper(device: torch.device, sync_batchnorm: bool):
    """What ``engine.fit`` trains through: ``DistributedDataParallel`` around the model (None when alone)."""
    if not active():
        return None

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    return wrap


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
