"""Search under a budget: the expected cost of the supernet's cells, differentiable in the alphas.

FBNet (Wu et al., CVPR 2019) and ProxylessNAS (Cai et al., ICLR 2019) add to the architecture
loss the expected cost of the mixed ops: each edge's candidates' costs weighted by softmax(alpha).
Here the cost of a candidate is what it would cost in the *derived* network, at the scale that
network is trained at (C=36, 20 cells by default): its parameters, or its forward FLOPs on one
32x32 image (torch's FLOP counter: convolutions and matmuls, a multiply-add counts 2), summed over
every cell of that type; or its forward latency at batch 1 on a named device, from a lookup table
measured once per op and position (`darts_sg.train.latency`; latency is taken as additive over ops, the
FBNet/ProxylessNAS assumption). A derived cell keeps 2 of the incoming edges of each node, so an edge
into a node with n inputs counts 2/n of its expected cost; the network around the cells (stem,
preprocessing, classifier) is a constant added on top, so that the expected cost is on the scale
of the derived network's own count.

The term added to the alpha loss (`CostPenalty`):

- without a target, ``weight * E / E0``: E0 is the expected cost at uniform alphas, so the term
  starts at `weight` whatever the unit, and always pulls towards cheaper ops (ProxylessNAS' form);
- with a target T, ``weight * relu(E / T - 1)``: a penalty on the relative excess only. Inside the
  budget the accuracy objective is left alone (its gradient is exactly zero there), and a cell over
  budget is pushed back in proportion to how far over it is, whatever the unit.

With a target, `fit_budget` makes the derived genotype meet it when any genotype of the space can:
the argmax genotype's choices are swapped greedily, each time the swap that loses the least alpha
weight per unit of cost saved (as P-DARTS caps skips at derivation).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from ..model.genotype import SKIP, Genotype
from ..model.measure import flop_counter, flops_per_image
from ..model.network import Network, count_params, reduction_layers
from ..model.ops import OpOptions, build_op
from ..utils.errors import UserError
from .latency import LatencyMeter

__all__ = ["COST_KINDS", "COST_UNITS", "CostPenalty", "CostTable", "fit_budget", "genotype_cost"]

COST_KINDS = ("params", "flops", "latency")
# The unit a cost is given in on the command line and in the metrics: (table units per unit, name).
COST_UNITS = {"params": (1e6, "M params"), "flops": (1e6, "MFLOPs"), "latency": (1.0, "ms")}


def _check_kind(kind: str) -> None:
    if kind not in COST_KINDS:
        raise UserError(f"--cost must be one of {', '.join(COST_KINDS)}, got {kind!r}")


@lru_cache(maxsize=None)
def _op_cost(kind: str, name: str, C: int, stride: int, size: int, options: OpOptions) -> float:
    """Parameters, or forward FLOPs on one `size` x `size` image, of one op as a derived network builds it."""
    op = build_op(name, C, stride, affine=True, options=options)
    if kind == "params":
        return float(sum(p.numel() for p in op.parameters()))
    counter = flop_counter()
    with torch.no_grad(), counter:
        op.eval()(torch.zeros(1, C, size, size))
    return float(counter.get_total_flops())


def _network_cost(kind: str, network: torch.nn.Module) -> float:
    if kind == "params":
        return float(count_params(network))
    return float(flops_per_image(network, torch.device("cpu")))


def _edge_input_size(reduction: bool, src: int, size: int) -> tuple[int, int]:
    """(stride, input resolution) of an edge from `src` in a cell whose inputs are `size` pixels square."""
    if not reduction:
        return 1, size
    return (2, size) if src < 2 else (1, size // 2)  # edges between a reduction cell's nodes run at half size


def _cells(C: int, layers: int) -> list[tuple[bool, int, int]]:
    """(reduction, channels, input resolution) of each cell of a CIFAR network."""
    reductions, cells, size = reduction_layers(layers), [], 32
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            C *= 2
        cells.append((reduction, C, size))
        if reduction:
            size //= 2
    return cells


def _edges(steps: int) -> list[tuple[int, int]]:
    return [(node, src) for node in range(steps) for src in range(node + 2)]


class CostTable:
    """The cost of each (edge, op) choice in the derived network, for the normal and the reduction cell.

    ``normal[e, o]``: the cost of op o on edge e summed over the network's normal cells (the same
    for ``reduce``); `fixed`: the cost of everything around the cells' edges. Latency (ms) comes from
    `meter` (a default one: CPU, one thread, no cache, when not given).
    """

    def __init__(self, kind: str, primitives: Sequence[str], steps: int, C: int = 36, layers: int = 20,
                 options: OpOptions | None = None, meter: LatencyMeter | None = None):  # fmt: skip
        _check_kind(kind)
        if kind == "latency" and meter is None:
            meter = LatencyMeter()
        self.kind, self.primitives, self.steps = kind, tuple(primitives), steps
        self.C, self.layers, self.options = C, layers, options or OpOptions()
        edges = _edges(steps)
        tables = {False: torch.zeros(len(edges), len(self.primitives), dtype=torch.float64),
                  True: torch.zeros(len(edges), len(self.primitives), dtype=torch.float64)}  # fmt: skip
        for reduction, C_cell, size in _cells(C, layers):
            for e, (_, src) in enumerate(edges):
                stride, edge_size = _edge_input_size(reduction, src, size)
                for o, name in enumerate(self.primitives):
                    if kind == "latency":
                        cost = meter.op(name, C_cell, stride, edge_size, self.options) if name != "none" else 0.0
                    else:
                        cost = _op_cost(kind, name, C_cell, stride, edge_size, self.options)
                    tables[reduction][e, o] += cost
        self.normal, self.reduce = tables[False], tables[True]
        # the share of each edge a derived cell keeps: 2 of the n inputs of its node
        self.edge_share = torch.tensor([2.0 / (node + 2) for node, _ in edges], dtype=torch.float64)
        op = next(name for name in self.primitives if name != "none")  # any genotype: the cost around its edges is the same
        edges_of_probe = tuple((op, src) for node in range(steps) for src in (0, 1))
        probe = Genotype(edges_of_probe, tuple(range(2, steps + 2)), edges_of_probe, tuple(range(2, steps + 2)))
        if kind == "latency":
            self.fixed = meter.fixed(probe, C, layers, self.options)
            meter.save()
        else:
            self.fixed = genotype_cost(probe, kind, C, layers, self.options) - self.cells_cost(probe)

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "CostTable":
        """Move the tables to `device` (once: a CUDA graph must not copy them at every step)."""
        self.normal, self.reduce, self.edge_share = (t.to(device, dtype) for t in (self.normal, self.reduce, self.edge_share))
        return self

    def cells_cost(self, genotype: Genotype) -> float:
        """The cost of the genotype's chosen ops alone, read from the table."""
        total = 0.0
        for table, edges in ((self.normal, genotype.normal), (self.reduce, genotype.reduce)):
            for k, (name, src) in enumerate(edges):
                e = _edges(self.steps).index((k // 2, src))
                total += float(table[e, self.primitives.index(name)])
        return total

    def total(self, genotype: Genotype) -> float:
        """The genotype's cost read from the table: exact for params and FLOPs, the sum of the ops' latencies for latency."""
        return self.fixed + self.cells_cost(genotype)

    def expected(self, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor) -> torch.Tensor:
        """The expected cost of the derived network under softmax(alpha): differentiable in the alphas only."""
        total = torch.zeros((), dtype=alpha_normal.dtype, device=alpha_normal.device)
        for alpha, table in ((alpha_normal, self.normal), (alpha_reduce, self.reduce)):
            weights = F.softmax(alpha.float(), dim=-1)
            per_edge = (weights * table.to(weights)).sum(-1)
            total = total + (per_edge * self.edge_share.to(weights)).sum()
        return total + self.fixed


def genotype_cost(genotype: Genotype, kind: str, C: int = 36, layers: int = 20, options: OpOptions | None = None) -> float:
    """The parameters or forward FLOPs (one 32x32 image) of the genotype's CIFAR-10 network, without the auxiliary head.

    (A genotype's latency is read from a latency table: ``CostTable("latency", ...).total(genotype)``.)"""
    if kind not in ("params", "flops"):
        raise UserError(f"genotype_cost counts params or flops, not {kind!r}; latency comes from CostTable.total")
    return _network_cost(kind, Network(genotype, C=C, layers=layers, num_classes=10, options=options))


class CostPenalty:
    """The cost term of the alpha loss (see the module docstring for its two forms)."""

    def __init__(self, table: CostTable, model, weight: float, target: float | None = None):
        if weight < 0:
            raise UserError(f"--cost-weight must be zero or positive, got {weight}")
        if target is not None and target <= 0:
            raise UserError(f"--cost-target must be positive, got {target}")
        self.table, self.model, self.weight, self.target = table.to(model.alpha_normal.device), model, weight, target
        uniform = torch.zeros_like(model.alpha_normal)
        self.reference = float(table.expected(uniform, uniform))

    def expected(self) -> torch.Tensor:
        return self.table.expected(self.model.alpha_normal, self.model.alpha_reduce)

    def __call__(self) -> torch.Tensor:
        expected = self.expected()
        if self.target is None:
            return self.weight * expected / self.reference
        return self.weight * F.relu(expected / self.target - 1.0)


def fit_budget(genotype: Genotype, normal_weights: torch.Tensor, reduce_weights: torch.Tensor, table: CostTable,
               target: float, max_skip: int | None = None) -> tuple[Genotype, int]:  # fmt: skip
    """The genotype made to cost at most `target` (table units), and the number of choices changed to get there.

    While it costs more, one derived edge changes its op, its input, or both: the change that loses the
    least softmax weight per unit of cost saved. The cost is additive over edges, so the loop stops at
    a genotype within the budget whenever one exists (it then reaches each node's two cheapest edges);
    otherwise at the cheapest genotype of the space. `max_skip` caps the normal cell's skips as in derivation.
    """
    cells = {"normal": list(genotype.normal), "reduce": list(genotype.reduce)}
    weights = {"normal": normal_weights.detach().double().cpu(), "reduce": reduce_weights.detach().double().cpu()}
    costs = {"normal": table.normal.detach().double().cpu(), "reduce": table.reduce.detach().double().cpu()}
    ops = [o for o, name in enumerate(table.primitives) if name != "none"]
    rows = {edge: row for row, edge in enumerate(_edges(table.steps))}
    changes = 0

    def total() -> float:
        return table.total(Genotype(tuple(cells["normal"]), genotype.normal_concat, tuple(cells["reduce"]), genotype.reduce_concat))

    while total() > target:
        best = None  # (loss per unit saved, cell, edge position, new edge)
        for cell, edges in cells.items():
            skips = sum(op == SKIP for op, _ in edges)
            for k, (name, src) in enumerate(edges):
                node = k // 2
                row, o = rows[(node, src)], table.primitives.index(name)
                taken = {s for j, (_, s) in enumerate(edges) if j // 2 == node and j != k}
                for new_src in (s for s in range(node + 2) if s not in taken):
                    new_row = rows[(node, new_src)]
                    for new_o in ops:
                        saved = float(costs[cell][row, o] - costs[cell][new_row, new_o])
                        new_name = table.primitives[new_o]
                        over_cap = cell == "normal" and max_skip is not None and new_name == SKIP and name != SKIP and skips >= max_skip
                        if saved <= 0 or over_cap:
                            continue
                        score = float(weights[cell][row, o] - weights[cell][new_row, new_o]) / saved
                        if best is None or score < best[0]:
                            best = (score, cell, k, (new_name, new_src))
        if best is None:  # the cheapest genotype of the space: the budget cannot be met
            break
        _, cell, k, edge = best
        cells[cell][k] = edge
        changes += 1
    fitted = Genotype(tuple(cells["normal"]), genotype.normal_concat, tuple(cells["reduce"]), genotype.reduce_concat)
    return fitted, changes
