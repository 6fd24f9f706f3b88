"""Latency lookup tables for search under a budget (FBNet, ProxylessNAS), measured once per op and position.

FBNet (Wu et al., CVPR 2019) and ProxylessNAS (Cai et al., ICLR 2019) do not time whole networks
during the search: they time each candidate op once at each position of the network it can take
(channels, stride, input resolution), on the target device, and take a network's latency as the
sum of its ops' latencies plus the fixed part around them. `LatencyMeter` does the same for the
derived network: batch 1 (the mobile setting), on the CPU with one thread unless told otherwise,
the median of `repeats` forward passes after warm-up. Each distinct (op, C, stride, size) is timed
once; the table is cached as JSON with a record of the machine that measured it, and a cache from
another machine (CPU model, GPU, torch version, threads, batch) is refused rather than mixed in.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..model.genotype import Genotype
from ..model.network import Network
from ..model.ops import OpOptions, build_op
from ..utils.errors import UserError
from ..utils.io import atomic_write_text, read_json
from .process import cpu_model

__all__ = ["LatencyMeter", "device_record"]

WARMUP = 3


def device_record(device: str = "cpu", threads: int = 1, batch: int = 1) -> dict[str, Any]:
    """What a latency depends on besides the op: the device, the CPU model, the GPU, torch, threads and batch."""
    if device not in ("cpu", "cuda"):
        raise UserError(f"--cost-device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--cost-device cuda: no CUDA device is available here; measure on the CPU (--cost-device cpu) or run on a GPU machine")
    return {
        "device": device, "cpu": cpu_model(), "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__, "threads": threads, "batch": batch,
    }  # fmt: skip


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _FreeEdge(nn.Module):
    """A stand-in edge that costs (almost) nothing: the identity, or a strided view on a reduction edge."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class LatencyMeter:
    """Forward latencies (ms) of ops and of the fixed part of a derived network, measured once, cached in `path`.

    `op(name, C, stride, size, options)`: one op on a `size` x `size` input; `fixed(genotype, C, layers, options)`:
    the network with every edge replaced by a free stand-in (stem, preprocessing, node sums, concatenation,
    pooling, classifier). Latency is taken as additive over ops, the FBNet/ProxylessNAS assumption.
    With a `path` holding a table measured elsewhere, construction fails with a one-line error.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", threads: int = 1, repeats: int = 20):
        if threads < 1 or repeats < 1:
            raise UserError(f"--cost-threads and the repeats must be positive, got {threads} and {repeats}")
        self.path, self.repeats = (Path(path) if path is not None else None), repeats
        self.record = device_record(device, threads)
        self.device = torch.device(device)
        self.table: dict[str, float] = {}
        self.measured = 0  # timings taken by this meter (0 when the cache had them all)
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        data = read_json(self.path, "latency table")
        if not isinstance(data, dict) or not isinstance(data.get("record"), dict) or not isinstance(data.get("ms"), dict):
            raise UserError(f"{self.path} is not a latency table; delete it to measure again")
        stored = data["record"]
        differs = [f"{key} {stored.get(key)!r} there, {value!r} here" for key, value in self.record.items() if stored.get(key) != value]
        if differs:
            raise UserError(
                f"{self.path} was measured on another device ({'; '.join(differs)}): resume on the machine and settings "
                f"that measured it, or delete it to measure the latencies again here"
            )
        self.table = {str(k): float(v) for k, v in data["ms"].items()}

    def save(self) -> None:
        """Write the table and its device record to `path` (when it has one)."""
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"record": self.record, "ms": self.table}, indent=1, sort_keys=True) + "\n")

    def _time(self, module: nn.Module, x: torch.Tensor) -> float:
        module = module.to(self.device).eval()
        x = x.to(self.device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        times = []
        with torch.no_grad(), _threads(self.record["threads"]):
            for k in range(WARMUP + self.repeats):
                sync()
                start = time.perf_counter()
                module(x)
                sync()
                if k >= WARMUP:
                    times.append(time.perf_counter() - start)
        self.measured += 1
        return 1000 * statistics.median(times)

    def _lookup(self, key: str, build) -> float:
        if key not in self.table:
            module, x = build()
            self.table[key] = self._time(module, x)
        return self.table[key]

    def op(self, name: str, C: int, stride: int, size: int, options: OpOptions) -> float:
        """Milliseconds of op `name` (C channels, `stride`) on one `size` x `size` input."""
        batch = self.record["batch"]
        return self._lookup(
            f"{name} C={C} stride={stride} size={size}",
            lambda: (build_op(name, C, stride, affine=True, options=options), torch.randn(batch, C, size, size)),
        )

    def fixed(self, genotype: Genotype, C: int, layers: int, options: OpOptions) -> float:
        """Milliseconds of the derived network around its edges (the same for every genotype of `genotype.steps` nodes)."""

        def build():
            network = Network(genotype, C=C, layers=layers, num_classes=10, options=options)
            for cell in network.cells:
                for k, edge in enumerate(cell.edges):
                    cell.edges[k] = _FreeEdge(2 if cell.reduction and cell.edge_list[k][1] < 2 else 1)
            return network, torch.randn(self.record["batch"], 3, 32, 32)

        return self._lookup(f"fixed C={C} layers={layers} nodes={genotype.steps}", build)

    def network(self, genotype: Genotype, C: int, layers: int, options: OpOptions) -> float:
        """Milliseconds of the whole derived network timed as one (not cached): a check on the table's additive sum."""
        network = Network(genotype, C=C, layers=layers, num_classes=10, options=options)
        return self._time(network, torch.randn(self.record["batch"], 3, 32, 32))
