"""Which process am I, and talking to the others: the process group under torchrun and its collectives."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "StopVote", "average_gradients", "from_main", "identical_across_ranks", "init_from_environment", "is_main_process",
    "leave_process_group", "world",
]  # fmt: skip


def init_from_environment(device: str = "auto") -> tuple[int, int]:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA); return (rank, world size)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=10))
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Leave the process group at the end of a job (a process that exits while still in it may abort)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    """The number of processes (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, the process that writes logs, checkpoints and pictures (and when alone)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def from_main(decide):
    """`decide()` evaluated on rank 0 alone and its (picklable) result handed to every process; `decide()` when alone.

    Whatever rank 0 does in `decide` (e.g. removing a folder) is done before any other process goes on."""
    if world() == 1:
        return decide()
    box = [decide() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=collective_device())
    return box[0]


def average_gradients(tensors) -> None:
    """All-reduce and average gradient tensors in place across processes (no-op when alone)."""
    n = world()
    if n == 1:
        return
    tensors = [t for t in tensors if t is not None]
    flat = torch.cat([t.reshape(-1) for t in tensors])  # one collective instead of hundreds
    dist.all_reduce(flat)
    flat.div_(n)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def identical_across_ranks(tensors) -> bool:
    """True when `tensors` hold bit-identical values on every process (True when alone).

    The comparison runs on the tensors' own device (NCCL gathers device tensors only)."""
    n = world()
    if n == 1:
        return True
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(n)]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def collective_device() -> torch.device:
    """Where small tensors for a collective must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class StopVote:
    """Agree across processes on whether to stop, so that every process stops after the same step.

    Each process calls the vote once per step with whether it was signalled; the votes are
    combined with an all-reduce (MAX) that is started at once and read at the next step. The
    vote is a CPU tensor on a gloo group of its own, so the host never waits for the device
    (under NCCL, a vote on the GPU would wait for the step's kernels to copy the flag in and
    out). Every process reads the same result at the same step. Alone, the vote is its own answer.
    """

    def __init__(self):
        self._pending: tuple[dist.Work, torch.Tensor] | None = None
        # every rank builds the group, in the same order (also under gloo: one code path)
        self._group = dist.new_group(backend="gloo") if world() > 1 else None

    def __call__(self, signalled: bool) -> bool:
        if world() == 1:
            return signalled
        flag = torch.tensor([int(signalled)])
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        previous, self._pending = self._pending, (work, flag)
        if previous is None:
            return False
        previous[0].wait()
        return bool(previous[1].item())

    def close(self) -> None:
        """Wait for the vote still in flight (a process must not exit with a collective pending)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
