"""Process set-up, done once before a job: threads, determinism, the process group, the device."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from ..utils.distributed import init_from_environment, world
from .rundir import RunError

__all__ = ["configure_process", "cpu_model", "machine_name", "resolve_device"]


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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's `model name`; `platform.processor()` where there is none)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_name(device: torch.device) -> str:
    """What a run ran on, for its metrics: the GPU's name, or the CPU's model and torch's thread count;
    under torchrun, followed by the number of processes (", 4 processes": four GPUs, or four CPU processes)."""
    processes = f", {world()} processes" if world() > 1 else ""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}{processes}"
    return f"cpu: {cpu_model()}, {thread_count(torch.get_num_threads())}{processes}"


def thread_count(threads: int) -> str:
    """'1 thread', '2 threads'."""
    return f"{threads} thread{'s' if threads != 1 else ''}"
