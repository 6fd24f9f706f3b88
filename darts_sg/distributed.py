"""Data-parallel runs under torchrun: process-group set-up and gradient averaging."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["init_from_environment", "world", "average_gradients"]


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


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_gradients(tensors) -> None:
    """All-reduce and average gradient tensors in place across processes (no-op when alone)."""
    n = world()
    if n == 1:
        return
    for t in tensors:
        dist.all_reduce(t)
        t.div_(n)
