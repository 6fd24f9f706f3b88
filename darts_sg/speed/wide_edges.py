"""Wide edges: all the mixed ops that read one node of a supernet cell (or the cell's two inputs), run as one wide op.

On a GPU the supernet's step is bound by the host issuing kernels (~60 forward and ~85 backward
aten ops per edge, 14 edges per cell), not by the GPU running them. Batch norm is per channel and
the convolutions of the candidates are depthwise or grouped, so the candidates of every edge that
reads the same tensor can run side by side on the channel axis, op-major (block b of the wide
tensor holds candidate b of every edge, edge after edge):

- one ReLU of the input; per dilation, one grouped depthwise convolution over the input repeated
  once per candidate and edge (a smaller kernel zero-embedded, centred, in the largest one of its
  dilation: sep 3x3 in 5x5, dil 3x3 in dil 5x5); one grouped 1x1 convolution; one batch norm over
  all their channels; the same again for the second half of the separable convolutions;
- the pools run once (their input and configuration are shared), their batch norms as one;
- the sandglass and inverted-residual blocks as one block: each of their convolutions grouped over
  the edges, each batch norm over all the edges' channels, each ReLU6 once, the shortcut in one add
  (the first depthwise convolution reads the input before any ReLU, repeated once per edge: the
  same repeated input as the identity skip's);
- the weighted sum of every edge is one multiply-and-reduce over the stacked candidate outputs.

A cell runs its edges grouped by the node they read, as soon as that node exists: s0 and s1, which
exist from the start, feed four edges each, to the same nodes, and run as one group over the two
inputs side by side (per-channel ops run on both at once; a 1x1 convolution on them is grouped by
input), whose multiply-and-reduce also sums each node's two edges; then node 0 feeds three edges,
node 1 two, node 2 one: four wide ops per cell instead of fourteen edges. The result is the plain
cell's up to float rounding (the sums into a node run in another order).

The substitute keeps every module, parameter and buffer where it was (the state-dict keys, old
checkpoints and the optimizers are untouched): the wide weights are concatenated from the
modules' own parameters at each call (their gradient split back in one op per stack, plus a crop
per smaller kernel size, and, inside `stacked_once`, once per step for all its passes), and each
batch norm's running statistics become views of one wide buffer per stage, which ``F.batch_norm`` updates in place; after ``.to()``, a dtype change
or ``load_state_dict(assign=True)`` replaced the buffers, the next forward re-homes them. Like
torch's batch norm with a momentum set, the wide batch norms never read ``num_batches_tracked``,
so they do not increment it. Ops that do not fit (the stride-2 factorized reduce, a block on a
single edge, a computed ``none``) run per edge inside the same wide op; cells with partial channels
(PC-DARTS), edge scales or a drop path set run as plain cells.
"""

from __future__ import annotations

from contextlib import contextmanager
from itertools import groupby
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..model.cells import Cell, DropPath, MixedOp
from ..model.ops import DilConv, FactorizedReduce, InvertedResidual, SandGlass, SepConv, Zero

__all__ = ["WideCell", "SharedStats", "stacked_once"]


class SharedStats:
    """The running statistics of some batch norms (same C, eps, momentum), as views of one wide buffer pair."""

    def __init__(self, bns: list[nn.BatchNorm2d]):
        self.bns = bns
        self._buffer_dicts = [bn._buffers for bn in bns]  # a dict look-up each, not nn.Module.__getattr__
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The wide (running mean, running var), re-homing the batch norms' buffers first if they moved."""
        mean, var = self.mean, self.var
        if mean is None or not all(b["running_mean"]._base is mean and b["running_var"]._base is var for b in self._buffer_dicts):
            mean, var = self._rehome()
        return mean, var

    @torch.no_grad()
    def _rehome(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.mean = torch.cat([bn.running_mean for bn in self.bns])
        self.var = torch.cat([bn.running_var for bn in self.bns])
        start = 0
        for bn in self.bns:
            end = start + bn.num_features
            bn.running_mean, bn.running_var = self.mean[start:end], self.var[start:end]  # registered buffers, now views
            start = end
        return self.mean, self.var

    def batch_norm(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """All the batch norms at once on `x`, their channels side by side (updating their running statistics)."""
        mean, var = self.buffers()
        bn = self.bns[0]
        return F.batch_norm(x, mean, var, None, None, training, bn.momentum, bn.eps)


def _uniform_batch_norms(bns: list[nn.Module]) -> bool:
    first = bns[0]
    return all(
        isinstance(bn, nn.BatchNorm2d) and not bn.affine and bn.track_running_stats and bn.momentum is not None
        and (bn.num_features, bn.eps, bn.momentum) == (first.num_features, first.eps, first.momentum)
        for bn in bns
    )  # fmt: skip


class _Stacks:
    """A wide op whose convolution weights are stacked from its modules' own (`layout`: as `_StackedWeights` takes it)."""

    layout: list[tuple[int, list[tuple[int, int]]]]
    reuse = False  # set inside `stacked_once`
    kept: tuple | None = None  # (weights, their versions, grad mode, stacks) while reused

    def stacked(self, weights: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The stacks of `layout`; inside `stacked_once`, the kept ones while the weights are the same parameters at
        the same version, in the same grad mode."""
        if not self.reuse:
            return _StackedWeights.apply(self.layout, *weights)
        versions, grad = [w._version for w in weights], torch.is_grad_enabled()
        kept = self.kept
        if kept is not None and kept[1] == versions and kept[2] == grad and all(a is b for a, b in zip(kept[0], weights)):
            return kept[3]
        stacks = _StackedWeights.apply(self.layout, *weights)
        if all(isinstance(w, nn.Parameter) for w in weights):  # not the tensors of a functional call (second order)
            self.kept = (weights, versions, grad, stacks)
        return stacks


class _Stage(_Stacks):
    """One depthwise-pointwise-BN stage of several candidates for all edges of a group (blocks op-major)."""

    def __init__(self, units: list[list[nn.Sequential]], shared_input: bool, sources: int = 1):
        # units[b][e]: the DilConv-shaped unit (ReLU, depthwise conv, 1x1 conv, BN) of block b, edge e;
        # shared_input: every block reads the same tensor, `sources` inputs side by side, each read by as many edges
        # (else the input is op-major over the blocks)
        self.units, self.shared_input, self.sources = units, shared_input, sources
        flat = [u for block in units for u in block]
        dws = [u[1] for u in flat]
        self.stride = dws[0].stride
        self.groups_1x1 = len(flat)
        self.channels = sum(u[1].in_channels for u in flat)
        self.runs = []  # (dilation, largest kernel, [(kernel, [units])...]) per run of blocks of one dilation
        for dilation, blocks in groupby(units, key=lambda block: block[0][1].dilation[0]):
            blocks = list(blocks)
            kmax = max(block[0][1].kernel_size[0] for block in blocks)
            by_kernel = [(k, [u for block in same for u in block]) for k, same in groupby(blocks, key=lambda b: b[0][1].kernel_size[0])]
            self.runs.append((dilation, kmax, by_kernel))
        self.stats = SharedStats([u[3] for u in flat])
        self.layout = [(kmax, [(k, len(units)) for k, units in by_kernel]) for _, kmax, by_kernel in self.runs] + [(1, [(1, self.groups_1x1)])]
        self.ok = (
            all(dw.stride == self.stride and dw.groups == dw.in_channels == dw.out_channels and dw.bias is None for dw in dws)
            and all(dw.kernel_size[0] == dw.kernel_size[1] and dw.dilation[0] == dw.dilation[1] for dw in dws)
            and all(dw.padding == (dw.dilation[0] * (dw.kernel_size[0] - 1) // 2,) * 2 for dw in dws)
            and all(u[2].kernel_size == (1, 1) and u[2].groups == 1 and u[2].bias is None and u[2].stride == (1, 1) for u in flat)
            and all(u[2].in_channels == u[2].out_channels == dws[0].in_channels for u in flat)
            and _uniform_batch_norms([u[3] for u in flat])
        )

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """`x`: the stage's input, already op-major over all blocks, or one tensor read by every block."""
        depthwise = [u[1].weight for _, _, by_kernel in self.runs for _, units in by_kernel for u in units]
        *depthwise, pointwise = self.stacked([*depthwise, *(u[2].weight for block in self.units for u in block)])
        widths = [weight.shape[0] for weight in depthwise]
        if self.shared_input:
            x = _tiled(x, self.sources, len(self.units[0]) // self.sources, len(self.units))
        inputs = x.split(widths, 1) if len(widths) > 1 else (x,)  # its backward: one cat, not a zero-filled copy per slice
        outs = [
            F.conv2d(inp, weight, None, self.stride, dilation * (kmax - 1) // 2, dilation, weight.shape[0])
            for (dilation, kmax, _), weight, inp in zip(self.runs, depthwise, inputs)
        ]
        h = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
        return self.stats.batch_norm(F.conv2d(h, pointwise, None, 1, 0, 1, self.groups_1x1), training)


class _StackedWeights(torch.autograd.Function):
    """Convolution weights stacked on the output axis, in one ``cat`` per stack (and a ``cat`` and a pad per smaller
    kernel size), and split back in one op per stack (and a crop and a split per smaller kernel size).

    `layout`: per stacked weight, (its kernel size kmax, [(kernel size k, how many weights)...]);
    the weights follow, in that order. A k x k kernel is zero-embedded, centred, in kmax x kmax.
    The values are those of autograd's own ``cat`` and ``pad``, whose backward would take a ``slice`` per weight.
    """

    @staticmethod
    def forward(ctx, layout, *weights):
        ctx.layout = layout
        stacks, i = [], 0
        for kmax, groups in layout:
            parts = []
            for k, n in groups:
                if k < kmax:  # the smaller kernels of one size padded at once
                    parts.append(F.pad(torch.cat(weights[i : i + n]) if n > 1 else weights[i], [(kmax - k) // 2] * 4))
                else:
                    parts += weights[i : i + n]
                i += n
            stacks.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        return tuple(stacks)

    @staticmethod
    def backward(ctx, *grads):
        out = [None]
        for (kmax, groups), grad in zip(ctx.layout, grads):
            rows = grad.shape[0] // sum(n for _, n in groups)
            sizes = [size for k, n in groups for size in ([n * rows] if k < kmax else [rows] * n)]
            pieces = iter(grad.split(sizes) if len(sizes) > 1 else (grad,))
            for k, n in groups:
                if k < kmax:
                    g = F.pad(next(pieces), [-((kmax - k) // 2)] * 4)  # the centre, cropped in one op
                    out += g.split(rows) if n > 1 else [g]
                else:
                    out += [next(pieces) for _ in range(n)]
        return tuple(out)


_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class _WideBlock(_Stacks):
    """The sandglass or inverted-residual block of every edge of a group, run as one block over the edges' channels side
    by side (edge-major): each convolution grouped over the edges (a depthwise one over E*C channels, a 1x1 one in E
    groups; the first, on the group's input, over the input repeated once per edge, or, where it is a 1x1 one, in one
    group per source), each batch norm over all the edges' channels, each activation once, and the shortcut added to
    every edge in one op. A block on a single edge runs as it is (``ok`` is False)."""

    def __init__(self, blocks: list[nn.Module], sources: int = 1):
        first = blocks[0]
        self.first, self.E, self.sources = first, len(blocks), sources
        self.plan: list[tuple[str, object]] = []  # ("conv", [the edges' convs]), ("bn", SharedStats) or ("act", module)
        self.ok = (
            self.E > 1 and type(first) in (SandGlass, InvertedResidual)
            and all(type(b) is type(first) and _shortcut(b) == _shortcut(first) for b in blocks)
            and all(isinstance(b.body, nn.Sequential) and len(b.body) == len(first.body) for b in blocks)
        )  # fmt: skip
        if not self.ok:
            return
        for layers in zip(*(b.body for b in blocks)):
            if all(isinstance(m, nn.Conv2d) for m in layers) and len({_conv_config(m) for m in layers}) == 1 and _plain_conv(layers[0]):
                self.plan.append(("conv", list(layers)))
            elif _uniform_batch_norms(list(layers)):
                self.plan.append(("bn", SharedStats(list(layers))))
            elif isinstance(layers[0], _ACTIVATIONS) and all(type(m) is type(layers[0]) and m.inplace == layers[0].inplace for m in layers):
                self.plan.append(("act", layers[0]))  # no parameters: the first edge's runs on every edge's channels
            else:
                self.ok = False
                return
        self.ok = bool(self.plan) and self.plan[0][0] == "conv"
        # whether it reads x once per edge: a grouped first convolution, or the shortcut
        self.reads_tiled = self.ok and (self.plan[0][1][0].groups > 1 or first.use_shortcut)
        self.layout = [(convs[0].kernel_size[0], [(convs[0].kernel_size[0], self.E)]) for kind, convs in self.plan if kind == "conv"]

    def __call__(self, x: torch.Tensor, training: bool, x_edges: torch.Tensor | None = None) -> torch.Tensor:
        """The E edges' blocks on `x` (`sources` inputs side by side, each read by E / sources edges), their outputs
        side by side on the channel axis; `x_edges`, if given: ``_tiled(x, sources, E // sources)``."""
        E, S = self.E, self.sources
        stacks = iter(self.stacked([conv.weight for kind, convs in self.plan if kind == "conv" for conv in convs]))
        h = x
        for kind, layer in self.plan:
            if kind == "conv":
                conv, groups = layer[0], layer[0].groups * E
                if h is x:  # the block's input, the same for every edge of a source
                    if conv.groups == 1:
                        groups = S  # every edge's output channels read all of its source: one group per source
                    else:
                        h = x_edges = x_edges if x_edges is not None else _tiled(x, S, E // S)
                h = F.conv2d(h, next(stacks), None, conv.stride, conv.padding, conv.dilation, groups)
            elif kind == "bn":
                h = layer.batch_norm(h, training)
            else:
                h = layer(h)
        use_shortcut, k = _shortcut(self.first)
        if not use_shortcut:
            return h
        if x_edges is None:
            x_edges = _tiled(x, S, E // S)
        if k is None or k == x.shape[1] // S:
            return h + x_edges
        out, inp = h.unflatten(1, (E, -1)), x_edges.unflatten(1, (E, -1))
        return torch.cat([out[:, :, :k] + inp[:, :, :k], out[:, :, k:]], 2).flatten(1, 2)


def _shortcut(block: nn.Module) -> tuple[bool, int | None]:
    """Whether `block` adds its input, and to how many of its first channels (None: all of them)."""
    return block.use_shortcut, getattr(block, "identity_channels", None)


def _conv_config(conv: nn.Conv2d) -> tuple:
    return conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups


def _plain_conv(conv: nn.Conv2d) -> bool:
    """Whether `conv` computes ``F.conv2d`` of its weight alone (no bias, zero padding)."""
    return conv.bias is None and conv.padding_mode == "zeros"


class _Group:
    """The edges of a cell that read some states (each read by as many edges, source-major), and how their candidates
    run as one wide op."""

    def __init__(self, srcs: list[int], edge_ids: list[int], edges: list[MixedOp], nodes: list[int], n_primitives: int):
        # nodes: the node each edge feeds
        self.srcs, self.edge_ids = srcs, edge_ids
        E, first, S = len(edges), edges[0], len(srcs)
        self.edges, self.S = edges, S
        # where every source feeds the same nodes in the same order, the group sums its sources' edges into each node
        self.fold = S > 1 and E % S == 0 and all(nodes[k] == nodes[k % (E // S)] for k in range(E))
        self.out_nodes = nodes[: E // S] if self.fold else nodes  # the node of each output
        kinds = [_kind(op) for op in first.ops]
        self.ok = all(isinstance(e, MixedOp) and [_kind(op) for op in e.ops] == kinds and e.active == first.active for e in edges)
        self.ok = self.ok and first.partial_channels == 1 and "none" not in kinds and E % S == 0
        pos = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in ("pool", "skip", "sep", "dil", "other")}
        self.pools = pos["pool"]
        self.sep, self.dil = pos["sep"], pos["dil"]
        self.skip, self.other = pos["skip"], pos["other"]
        self.pool_stats = SharedStats([e.ops[p][1] for p in self.pools for e in edges]) if self.pools else None
        if self.pools:  # they run once, as the first edge's: the same for every edge
            self.ok = self.ok and _uniform_batch_norms(self.pool_stats.bns)
            self.ok = self.ok and all(_settings(e.ops[p][0]) == _settings(first.ops[p][0]) for p in self.pools for e in edges)
        self.stage1 = self.stage2 = None
        if self.sep or self.dil:
            self.stage1 = _Stage([[e.ops[p][0] for e in edges] for p in self.sep] + [[e.ops[p] for e in edges] for p in self.dil], True, S)
            self.ok = self.ok and self.stage1.ok
        if self.sep:
            self.stage2 = _Stage([[e.ops[p][1] for e in edges] for p in self.sep], False)
            self.ok = self.ok and self.stage2.ok and self.stage2.stride == (1, 1)
        # the sandglass and inverted-residual blocks that run as one block over all the edges (position -> block)
        self.wide_blocks = {p: block for p in self.other if (block := _WideBlock([e.ops[p] for e in edges], S)).ok}
        takes_relu = getattr(first, "takes_relu", None)
        self.reads_relu = {p: takes_relu is not None and takes_relu[p] for p in self.other}
        # x with every source's channels once per edge that reads it, made once: for the identity skips and the blocks
        self.tiles_x = any(isinstance(first.ops[p], nn.Identity) for p in self.skip) or any(
            block.reads_tiled and not self.reads_relu[p] for p, block in self.wide_blocks.items()
        )  # fmt: skip
        # the blocks of the stacked outputs, in order, as positions in the edges' op lists
        self.order = self.pools + self.skip + self.sep + self.dil + self.other
        # index of each (block, edge) weight in the cell's flattened (edges x primitives) weights
        self.weight_index = torch.tensor(
            [edge_id * n_primitives + first.active[p] for p in self.order for edge_id in edge_ids], dtype=torch.long
        )
        self.E = E

    def per_edge(self, parts: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Each edge's input: the one of `parts` (a tensor per source) that its source gives."""
        return [parts[k * self.S // self.E] for k in range(self.E)]

    def stacks(self) -> list[_Stacks]:
        """The group's wide ops that stack weights."""
        return [stage for stage in (self.stage1, self.stage2) if stage is not None] + list(self.wide_blocks.values())

    def __call__(self, xs: list[torch.Tensor], weights: torch.Tensor, training: bool) -> torch.Tensor:
        """The E edges' outputs on the states `xs` they read, stacked: (N, E, C, H', W'), or with `fold` the sums of each
        node's edges: (N, E / S, C, H', W'); `weights`: the (block, edge) weights in the order of `weight_index`."""
        edges, E, S = self.edges, self.E, self.S
        x = torch.cat(xs, 1) if S > 1 else xs[0]  # the sources side by side: per-channel ops run on all at once
        relu_x = F.relu(x) if self.stage1 is not None else None
        x_edges = _tiled(x, S, E // S) if self.tiles_x else None
        pieces: list[torch.Tensor] = []
        if self.pools:
            pooled = [edges[0].ops[p][0](x) for p in self.pools]  # no parameters: the same for every edge
            pieces.append(self.pool_stats.batch_norm(_repeated(pooled, S, E // S), training))
        for p in self.skip:
            if isinstance(edges[0].ops[p], nn.Identity):
                pieces.append(x_edges)
            else:
                pieces += [e.ops[p](inp) for e, inp in zip(edges, self.per_edge(xs))]
        if self.stage1 is not None:
            mid = self.stage1(relu_x, training)
            n_sep = len(self.sep) * E * x.shape[1] // S
            sep_mid, dil_mid = mid.split([n_sep, mid.shape[1] - n_sep], 1) if self.sep and self.dil else (mid, mid)
            if self.sep:
                pieces.append(self.stage2(F.relu(sep_mid), training))
            if self.dil:
                pieces.append(dil_mid)
        for p in self.other:
            inp = relu_x if self.reads_relu[p] else x
            block = self.wide_blocks.get(p)
            if block is not None:
                pieces.append(block(inp, training, None if self.reads_relu[p] else x_edges))
            else:
                parts = relu_x.chunk(S, 1) if self.reads_relu[p] else xs
                pieces += [e.ops[p](t) for e, t in zip(edges, self.per_edge(parts))]
        stacked = torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]
        if self.fold:  # (N, blocks, sources, edges per source, C, H, W), summed over blocks and sources
            shape = (len(self.order), S, E // S)
            return (stacked.unflatten(1, (*shape, -1)) * weights.view(1, *shape, 1, 1, 1)).sum((1, 2))
        stacked = stacked.unflatten(1, (len(self.order), E, -1))
        w = weights.view(1, len(self.order), E, 1, 1, 1)
        return (stacked * w).sum(1)


@contextmanager
def stacked_once(model: nn.Module) -> Iterator[None]:
    """Inside, each wide stage of `model` stacks its weights once and reuses the stacks while they stay the same
    parameters at the same version: the forward passes of one step before its optimizer update (the alpha and the
    weight pass) share them. Nothing is kept after the block, so a CUDA graph captured around it stacks once per replay.
    """
    stages = [
        stage for cell in model.modules() if isinstance(cell, WideCell) and getattr(cell, "_wide_groups", None)
        for group in cell._wide_groups for stage in group.stacks()
    ]  # fmt: skip
    for stage in stages:
        stage.reuse = True
    try:
        yield
    finally:
        for stage in stages:
            stage.reuse, stage.kept = False, None


def _repeated(blocks: list[torch.Tensor], sources: int, E: int) -> torch.Tensor:
    """Each of `blocks` holds `sources` inputs side by side; every input's channels repeated E times, block after block:
    ``torch.cat([s for t in blocks for s in t.chunk(sources, 1) for _ in range(E)], 1)``, whose backward sums the
    copies in one op (a ``cat``'s backward takes a slice per copy and an add per repeat)."""
    if E == 1:
        return torch.cat(blocks, 1) if len(blocks) > 1 else blocks[0]
    if len(blocks) == 1:
        return _tiled(blocks[0], sources, E)
    t = torch.stack(blocks, 1)
    if sources > 1:
        t = t.unflatten(2, (sources, -1)).flatten(1, 2)
    return t.repeat(1, 1, E, 1, 1).flatten(1, 2)


def _tiled(x: torch.Tensor, sources: int, E: int, blocks: int = 1) -> torch.Tensor:
    """`x` holds `sources` inputs side by side; `blocks` times over, every input's channels repeated E times: one op
    whose backward is one sum."""
    if sources == 1:
        return x.repeat(1, blocks * E, 1, 1) if blocks * E > 1 else x
    return x.unflatten(1, (sources, -1)).unsqueeze(1).repeat(1, blocks, 1, E, 1, 1).flatten(1, 3)


def _settings(module: nn.Module) -> dict:
    """A parameter-free module's settings (a pool's kernel, stride, padding, ...)."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}


def _kind(op: nn.Module) -> str:
    if isinstance(op, nn.Sequential) and len(op) == 2 and type(op[0]) in (nn.MaxPool2d, nn.AvgPool2d):
        return "pool"
    if isinstance(op, (nn.Identity, FactorizedReduce)):
        return "skip"
    if type(op) is SepConv:
        return "sep"
    if type(op) is DilConv:
        return "dil"
    if isinstance(op, Zero):
        return "none"
    return "other"


class WideCell(Cell):
    """``Cell`` whose mixed-op edges run grouped by the state they read, as wide ops (module docstring).

    Made from a built supernet ``Cell`` by ``darts_sg.speed.accelerate`` (a new module holding the plain
    cell's children, then `widen` plans the groups): the very same modules, parameters and buffers.
    """

    def widen(self) -> "WideCell":
        """Plan the wide ops; a cell that does not fit (partial channels, other edge modules) stays plain."""
        self._wide_groups: list[_Group] | None = None
        edges = list(self.edges)
        if not edges or not all(isinstance(e, MixedOp) for e in edges) or len({len(e.ops) for e in edges}) != 1:
            return self
        n_primitives = max(max(e.active) for e in edges) + 1
        by_source = {src: [k for k, (_, s) in enumerate(self.edge_list) if s == src] for src in sorted({s for _, s in self.edge_list})}
        groups = []
        if len(by_source.get(0, ())) == len(by_source.get(1, ())) > 0:  # the cell's two inputs, as one group if it fits
            ids = by_source[0] + by_source[1]
            group = _Group([0, 1], ids, [edges[k] for k in ids], [self.edge_list[k][0] for k in ids], n_primitives)
            if group.ok:
                groups.append(group)
                del by_source[0], by_source[1]
        for src, ids in by_source.items():
            group = _Group([src], ids, [edges[k] for k in ids], [self.edge_list[k][0] for k in ids], n_primitives)
            if not group.ok:
                return self
            groups.append(group)
        self._wide_groups = groups
        # every group's weights gathered at once: one index_select (and one index_add back) per cell
        self.register_buffer("_wide_index", torch.cat([g.weight_index for g in groups]), persistent=False)
        self._wide_sizes = [len(g.weight_index) for g in groups]
        return self

    def forward(self, s0, s1, edge_weights=None, edge_scales=None):
        groups = getattr(self, "_wide_groups", None)
        if groups is None or edge_weights is None or edge_scales is not None or any(
            isinstance(d, DropPath) and d.p > 0 and self.training for d in self.drop_paths
        ):
            return super().forward(s0, s1, edge_weights, edge_scales)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        node_sums: list[torch.Tensor | None] = [None] * self.steps
        group_weights = edge_weights.view(-1).index_select(0, self._wide_index).split(self._wide_sizes)
        for group, weights in zip(groups, group_weights):
            while len(states) <= group.srcs[-1]:  # every edge into that node has run (groups go by ascending source)
                states.append(node_sums[len(states) - 2])
            outs = group([states[src] for src in group.srcs], weights, self.training).unbind(1)
            for node, h in zip(group.out_nodes, outs):
                node_sums[node] = h if node_sums[node] is None else node_sums[node] + h
        states.extend(node_sums[len(states) - 2 :])
        return torch.cat([states[i] for i in self.concat], dim=1)
