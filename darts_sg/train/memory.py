"""Before a long run: will a training step fit in memory?

A step's peak memory is dominated by the activations autograd keeps for the backward pass, and
those grow linearly with the batch. `activation_gb` measures them on two tiny batches (without
changing the model's batch-norm statistics or the random state) and extrapolates to the run's
batch; `memory_report` compares that with the memory available, so that a run that would be
killed by the out-of-memory killer hours later says so, with the flags that help, at the start.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..model.ops import InvertedResidual, SandGlass
from ..model.recompute import running_stats_kept

__all__ = ["activation_gb", "available_gb", "counting_saved_bytes", "memory_report"]

PROBE_BATCHES = (2, 4)


@contextmanager
def counting_saved_bytes(counts: dict, key: Callable[[], Any] = lambda: None, exclude: tuple[torch.Tensor, ...] = ()):
    """Add the bytes of the tensors autograd saves inside the block to `counts[key()]`.

    Each storage is counted once (a storage saved twice is kept once); the storages of `exclude`
    (e.g. an input that something else keeps anyway) are not counted.
    """
    seen = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            k = key()
            counts[k] = counts.get(k, 0) + storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


@contextmanager
def _saved_bytes_counter(per_cell: dict[int | None, int], cells: nn.ModuleList):
    """Count the bytes of the tensors autograd saves, per cell index (None: outside the cells)."""
    current: list[int | None] = [None]
    hooks = [
        cell.register_forward_pre_hook(lambda _m, _a, i=i: current.__setitem__(0, i)) for i, cell in enumerate(cells)
    ] + [cell.register_forward_hook(lambda *_: current.__setitem__(0, None)) for cell in cells]
    try:
        with counting_saved_bytes(per_cell, key=lambda: current[0]):
            yield
    finally:
        for hook in hooks:
            hook.remove()


def _probe(
    model: nn.Module, batch: int, device: torch.device, channels_last: bool, recompute: bool, image_size: int = 32
) -> dict[int | None, int]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    counts: dict[int | None, int] = {}
    flag = model.recompute_cells
    model.recompute_cells = recompute
    try:
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with running_stats_kept(model), rng, _saved_bytes_counter(counts, model.cells):
            model(x)
    finally:
        model.recompute_cells = flag
    return counts


def activation_gb(
    model: nn.Module, batch_size: int, device: torch.device, channels_last: bool = True, image_size: int = 32
) -> float:
    """GB a training step of `batch_size` images (`image_size` pixels square) needs for activations, at its peak.

    Without recomputation: what the forward pass keeps for backward. With recomputed cells: the
    cells' inputs plus twice the largest cell's activations (rebuilt one cell at a time in the
    backward pass, and their gradients beside them).
    """
    small, large = PROBE_BATCHES

    def extrapolate(a: int, b: int) -> float:
        return (a + (b - a) / (large - small) * (batch_size - small)) / 1e9

    stored = [_probe(model, n, device, channels_last, False, image_size) for n in PROBE_BATCHES]
    if not model.recompute_cells:
        return extrapolate(sum(stored[0].values()), sum(stored[1].values()))
    inputs = [sum(_probe(model, n, device, channels_last, True, image_size).values()) for n in PROBE_BATCHES]
    largest_cell = max(extrapolate(stored[0].get(i, 0), stored[1].get(i, 0)) for i in range(len(model.cells)))
    return extrapolate(*inputs) + 2 * largest_cell


def available_gb(device: torch.device) -> float | None:
    """Free memory for the run: CUDA free memory, or Linux's MemAvailable; None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 1e9
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / 1e9
    return None


def _has_plain_blocks(model: nn.Module) -> bool:
    """True if a sandglass or inverted-residual block of `model` runs without --lean-blocks."""
    blocks = (m for m in model.modules() if isinstance(m, (SandGlass, InvertedResidual)))
    return any(type(block.body) is nn.Sequential for block in blocks)


def memory_report(
    model: nn.Module, batch_size: int, device: torch.device, channels_last: bool = True, image_size: int = 32
) -> str:
    """One line on the activations a step keeps and the memory available; a warning if they do not fit."""
    need = activation_gb(model, batch_size, device, channels_last, image_size)
    free = available_gb(device)
    line = f"memory: a step needs ~{need:.1f} GB for activations (batch {batch_size} per process)"
    if free is None:
        return line
    line += f", {free:.1f} GB available"
    if need > 0.9 * free:
        hints = ["--lean-blocks"] if _has_plain_blocks(model) else []
        hints += ["--recompute-cells"] if not model.recompute_cells else []
        hints += ["--partial-channels 4 (search)", "a smaller --batch-size"]
        line += f". WARNING: this step may not fit in memory; try {', '.join(hints)}"
    return line
