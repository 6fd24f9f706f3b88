"""Process set-up, done once before a job: threads, determinism, the process group, the device."""

from __future__ import annotations

import os
from typing import Any

import torch

from .distributed import init_from_environment
from .runs import RunError

__all__ = ["configure_process", "resolve_device"]


def configure_process(config: Any) -> tuple[int, int]:
    """Apply threads and determinism; join the process group under torchrun. Returns (rank, world size)."""
    if getattr(config, "threads", 0):
        torch.set_num_threads(config.threads)
    if getattr(config, "deterministic", False):
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    return init_from_environment(getattr(config, "device", "auto"))


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu` or `cuda`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    if name not in ("cpu", "cuda"):
        raise RunError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)
