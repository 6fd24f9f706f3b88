"""Wide cells: a derived (retraining) cell running its convolution edges of one shape as one wide op.

On a GPU the retraining step is bound by the host issuing kernels, and DARTS_V2's normal cell runs five
separable 3x3 convolutions (two read s0, three s1), each a ReLU and two depthwise-pointwise-BN halves.
This cell runs its edges in waves: first every edge that reads a cell input, then every edge that reads
a node the waves before completed, and so on. Within a wave, the separable (or dilated) convolutions of
one shape run side by side on the channel axis, as the supernet's candidates do in ``wide_edges``:

- one ReLU of the states they read, stacked; the input blocks gathered in one ``index_select``;
- per half, one grouped depthwise convolution, one grouped 1x1 convolution and one batch norm over all
  k*C channels, the weights stacked at each call with one-op gradients (``wide_edges._StackedWeights``)
  and the running statistics as views of one wide buffer (``wide_edges.SharedStats``);
- a convolution alone in its shape reuses the ReLU of its state; parameter-free edges that repeat on
  one state (two max pools of s0) run once;
- a cell's output is the input of the next two cells' preprocessing (and of the auxiliary head), which
  all ReLU it: `share_input_relus` makes those ReLUs `SharedInputReLU`s, the first one's ReLU serving
  the others (``accelerate`` applies it with the wide cells, not to recomputed or compiled cells).

Drop path draws every edge's mask first, one draw per edge in the plain cell's order (the same random
stream, so the same masks), into one buffer per wave with a row per edge, laid out by wide op (the rows
as views in one ``unbind``): one ``div_`` scales a wave's masks and one multiply applies them to a wide
op's output. The node sums add
their edges in the plain cell's order. So the result is the plain cell's up to float rounding. Every
module, parameter and buffer stays where it was (state-dict keys, old checkpoints and the optimizers
are untouched); like the wide edges', the wide batch norms do not count batches
(``num_batches_tracked``, which nothing reads with a momentum set). A cell runs plain when given edge
weights or while its drop paths differ in probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.cells import Cell, DropPath, MixedOp
from ..model.network import AuxiliaryHead
from ..model.ops import DilConv, FactorizedReduce, ReLUConvBN, SepConv
from .batchnorm import UncountedBatchNorm2d, WideBatchNorm2d
from .wide_edges import SharedStats, _StackedWeights

__all__ = ["SharedInputReLU", "WideDerivedCell", "share_input_relus"]

# batch norms that compute torch's batch norm (the wide one replaces them by F.batch_norm)
_BATCH_NORMS = (nn.BatchNorm2d, UncountedBatchNorm2d, WideBatchNorm2d)
_SHARABLE = (nn.MaxPool2d, nn.AvgPool2d)  # no parameters, no state: the same output for the same input


def _unit_key(unit: nn.Module) -> tuple | None:
    """The shape of a DilConv-shaped unit (ReLU, depthwise conv, 1x1 conv, batch norm), or None if it is not one."""
    if not isinstance(unit, nn.Sequential) or len(unit) != 4:
        return None
    relu, dw, pw, bn = unit
    fits = (
        type(relu) is nn.ReLU and type(dw) is nn.Conv2d and type(pw) is nn.Conv2d and type(bn) in _BATCH_NORMS
        and dw.groups == dw.in_channels == dw.out_channels and dw.bias is None and dw.padding_mode == "zeros"
        and not isinstance(dw.padding, str) and pw.kernel_size == (1, 1) and pw.stride == (1, 1) and pw.padding == (0, 0)
        and pw.groups == 1 and pw.bias is None and pw.in_channels == dw.out_channels
        and bn.num_features == pw.out_channels and bn.track_running_stats and bn.momentum is not None
    )  # fmt: skip
    if not fits:
        return None
    return (dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride, dw.padding, dw.dilation, bn.affine, bn.eps, bn.momentum)


def _conv_units(op: nn.Module) -> list[nn.Sequential] | None:
    """The DilConv-shaped units of a separable or dilated convolution edge, in order; None for other edges."""
    if type(op) is SepConv:
        units = list(op)
    elif type(op) is DilConv:
        units = [op]
    else:
        return None
    return units if all(_unit_key(u) is not None for u in units) else None


def _after_relu(units: list[nn.Sequential], relu_x: torch.Tensor) -> torch.Tensor:
    """A convolution edge's output from its input's ReLU (the first unit's own ReLU skipped)."""
    h = relu_x
    for i, unit in enumerate(units):
        for layer in unit if i else list(unit)[1:]:
            h = layer(h)
    return h


class SharedInputReLU(nn.ReLU):
    """``nn.ReLU`` taken once per input tensor: a cell's output is the input of the next two cells' preprocessing
    (and of the auxiliary head), which all ReLU it; the first one's ReLU serves the others.

    The ReLU lives on the tensor itself (so it goes with it), for its version and grad mode; a leaf's is not
    kept (a second forward pass from the same leaf would find the graph that its first backward freed).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled()
        if self.inplace or x.is_inference() or (grad and x.grad_fn is None):  # inference tensors have no version
            return super().forward(x)
        kept = x.__dict__.get("_shared_relu")
        if kept is not None and kept[0] == x._version and kept[1] == grad:
            return kept[2]
        out = F.relu(x)
        x._shared_relu = (x._version, grad, out)
        return out


def share_input_relus(module: nn.Module) -> None:
    """Make the ReLUs that read a cell's inputs (its preprocessing's) or the auxiliary head's `SharedInputReLU`s.

    Not for recomputed or compiled cells: a recomputation must compute what the forward pass computed, and
    a compiled cell traces its own ReLUs.
    """
    if isinstance(module, Cell):
        for pre in (module.preprocess0, module.preprocess1):
            if type(pre) is ReLUConvBN and type(pre[0]) is nn.ReLU:
                pre[0] = _as_shared(pre[0])
            elif type(pre) is FactorizedReduce and type(pre.relu) is nn.ReLU:
                pre.relu = _as_shared(pre.relu)
    elif type(module) is AuxiliaryHead and type(module.features[0]) is nn.ReLU:
        module.features[0] = _as_shared(module.features[0])


def _as_shared(relu: nn.ReLU) -> SharedInputReLU:
    shared = SharedInputReLU.__new__(SharedInputReLU)
    shared.__dict__.update(relu.__dict__)
    return shared


class _WideConvs:
    """k convolution edges of one shape, run as one wide op on their inputs side by side (block b: edge b)."""

    def __init__(self, units: list[list[nn.Sequential]]):
        # units[e][s]: unit s (0, or 0 and 1 for a separable convolution) of edge e
        self.k = len(units)
        self.stages = [[edge_units[s] for edge_units in units] for s in range(len(units[0]))]
        self.stats = [SharedStats([u[3] for u in stage]) for stage in self.stages]
        self.affine = units[0][0][3].affine
        per_stage = 4 if self.affine else 2
        self.layout = [
            entry for stage in self.stages
            for entry in [(stage[0][1].kernel_size[0], [(stage[0][1].kernel_size[0], self.k)])] + [(1, [(1, self.k)])] * (per_stage - 1)
        ]  # fmt: skip

    def weights(self) -> list[torch.Tensor]:
        """Per stage: the depthwise, pointwise, (batch norm weight and bias) parameters of every edge."""
        out = []
        for stage in self.stages:
            out += [u[1].weight for u in stage] + [u[2].weight for u in stage]
            if self.affine:
                out += [u[3].weight for u in stage] + [u[3].bias for u in stage]
        return out

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """`x`: the k inputs' ReLUs side by side, (N, k*C, H, W); the k outputs side by side."""
        stacks = iter(_StackedWeights.apply(self.layout, *self.weights()))
        for s, (stage, stats) in enumerate(zip(self.stages, self.stats)):
            dw, pw, bn = stage[0][1], stage[0][2], stage[0][3]
            if s:
                x = F.relu(x)
            x = F.conv2d(x, next(stacks), None, dw.stride, dw.padding, dw.dilation, self.k * dw.in_channels)
            x = F.conv2d(x, next(stacks), None, 1, 0, 1, self.k)
            weight, bias = (next(stacks), next(stacks)) if self.affine else (None, None)
            mean, var = stats.buffers()
            x = F.batch_norm(x, mean, var, weight, bias, training, bn.momentum, bn.eps)
        return x


class _Wave:
    """The edges of a cell that read states ready at the same time, and how they run.

    sources: the states read by convolution edges (their ReLUs are taken once, stacked);
    groups: (edge ids in block order, their wide op, name of the index buffer of their blocks' sources);
    singles: (edge id, its units, position of its source in `sources`);
    others: (edge id, key of the shared computation or None, module);
    rows: the row of each droppable edge in the wave's drop-path masks (wide ops' blocks first, then the rest).
    """

    def __init__(self, cell: Cell, ids: list[int], position: int):
        srcs = [src for _, src in cell.edge_list]
        convs = {k: _conv_units(cell.edges[k]) for k in ids}
        conv_ids = [k for k in ids if convs[k] is not None]
        self.sources = sorted({srcs[k] for k in conv_ids})
        by_shape: dict[tuple, list[int]] = {}
        for k in conv_ids:
            by_shape.setdefault(tuple(_unit_key(u) for u in convs[k]), []).append(k)
        self.groups, self.singles, self.others = [], [], []
        for shape_ids in by_shape.values():
            if len(shape_ids) == 1:
                k = shape_ids[0]
                self.singles.append((k, convs[k], self.sources.index(srcs[k])))
                continue
            blocks = sorted(shape_ids, key=lambda k: (self.sources.index(srcs[k]), k))
            name = f"_wide_index_{position}_{len(self.groups)}"
            cell.register_buffer(name, torch.tensor([self.sources.index(srcs[k]) for k in blocks]), persistent=False)
            self.groups.append((blocks, _WideConvs([convs[k] for k in blocks]), name))
        for k in ids:
            if convs[k] is None:
                op = cell.edges[k]
                shared = (srcs[k], type(op), op.extra_repr()) if type(op) in _SHARABLE else None
                self.others.append((k, shared, op))
        droppable = [k for k in ids if isinstance(cell.drop_paths[k], DropPath)]
        self.grouped = {k for blocks, _, _ in self.groups for k in blocks}
        self.dropped_alone = [k for k in droppable if k not in self.grouped]
        # every block of a wide op has a drop path, or none has (the cell was built without): its rows are consecutive
        self.ok = all(len({k in droppable for k in blocks}) == 1 for blocks, _, _ in self.groups)
        order = [k for blocks, _, _ in self.groups for k in blocks if k in droppable] + self.dropped_alone
        self.rows = {k: r for r, k in enumerate(order)}

    def masks(self, like: torch.Tensor) -> torch.Tensor:
        """Room for the wave's drop-path masks, rows of (N, 1, 1, 1) (one mask: (N, 1, 1, 1), the plain drop path's)."""
        rows = len(self.rows)
        return torch.empty([rows] * (rows > 1) + [like.shape[0], 1, 1, 1], dtype=like.dtype, device=like.device)

    def masks_of(self, noise: torch.Tensor, k: int, n: int) -> torch.Tensor:
        """The masks of edge `k` and of the n - 1 edges in the rows after it, (N, n, 1, 1, 1)."""
        first = self.rows[k]
        return (noise if n == len(self.rows) else noise[first : first + n]).transpose(0, 1)

    def run(self, cell: Cell, states: list, noise: torch.Tensor | None, rows: tuple | None) -> dict[int, torch.Tensor]:
        """Every edge's output, by edge id; times its drop-path mask when `noise` holds the wave's masks (`rows`:
        each row of it, (N, 1, 1, 1))."""
        training = cell.training
        relu = stacked = None  # one ReLU for every convolution of the wave: of its one source, or of them stacked
        if len(self.sources) > 1:
            relu = stacked = F.relu(torch.stack([states[s] for s in self.sources], 1))  # (N, sources, C, H, W)
        elif self.sources:
            relu = F.relu(states[self.sources[0]])
        outs: dict[int, torch.Tensor] = {}
        for blocks, convs, name in self.groups:
            x = stacked.index_select(1, getattr(cell, name)).flatten(1, 2) if stacked is not None else relu.repeat(1, len(blocks), 1, 1)
            h = convs(x, training).unflatten(1, (len(blocks), -1))
            if noise is not None and blocks[0] in self.rows:
                h = h * self.masks_of(noise, blocks[0], len(blocks))
            outs.update(zip(blocks, h.unbind(1)))
        for k, units, source in self.singles:
            outs[k] = _after_relu(units, stacked[:, source] if stacked is not None else relu)
        shared: dict[tuple, torch.Tensor] = {}
        for k, key, op in self.others:
            if key is None:
                outs[k] = op(states[cell.edge_list[k][1]])
            else:
                if key not in shared:
                    shared[key] = op(states[key[0]])
                outs[k] = shared[key]
        if noise is not None:
            for k in self.dropped_alone:
                outs[k] = outs[k] * rows[self.rows[k]]
        return outs


class WideDerivedCell(Cell):
    """``Cell`` of a derived network whose convolution edges of one shape run as one wide op (module docstring).

    Made from a built ``Cell`` by ``darts_sg.speed.accelerate`` (a new module holding the plain cell's
    children, then `widen` plans the waves): the very same modules, parameters and buffers.
    """

    def widen(self) -> "WideDerivedCell":
        """Plan the waves; a cell that does not fit (mixed ops, other drop-path modules) stays plain."""
        self._waves: list[_Wave] | None = None
        nodes = [node for node, _ in self.edge_list]
        if set(nodes) != set(range(self.steps)) or any(isinstance(e, MixedOp) for e in self.edges):
            return self
        if not all(isinstance(d, DropPath) or type(d) is nn.Identity for d in self.drop_paths):
            return self
        waves, done, ready = [], set(), {0, 1}
        while len(done) < len(nodes):
            ids = [k for k, (_, src) in enumerate(self.edge_list) if k not in done and src in ready]
            if not ids:
                return self
            waves.append(_Wave(self, ids, len(waves)))
            done.update(ids)
            ready |= {node + 2 for node in set(nodes) if all(k in done for k, n in enumerate(nodes) if n == node)}
        # the drop-path masks in the plain cell's order: (wave, edge) edge by edge
        self._draws = sorted(((w, k) for w, wave in enumerate(waves) for k in wave.rows), key=lambda draw: draw[1])
        self._node_edges = [[k for k, n in enumerate(nodes) if n == node] for node in range(self.steps)]
        self._waves = waves if all(wave.ok for wave in waves) else None
        return self

    def _survival(self) -> float | None | bool:
        """1 - p of the drop paths in use, None when none is in use, False when they differ (then: plain)."""
        if not self.training:
            return None
        ps = {d.p for d in self.drop_paths if isinstance(d, DropPath)}
        if not ps or ps == {0.0}:
            return None
        return 1.0 - ps.pop() if len(ps) == 1 else False

    def forward(self, s0, s1, edge_weights=None, edge_scales=None):
        waves = getattr(self, "_waves", None)
        survival = self._survival() if waves is not None else None
        if waves is None or edge_weights is not None or edge_scales is not None or survival is False:
            return super().forward(s0, s1, edge_weights, edge_scales)
        states: list[torch.Tensor | None] = [self.preprocess0(s0), self.preprocess1(s1)] + [None] * self.steps
        noises = rows = [None] * len(waves)
        if survival is not None:
            # every mask drawn first, edge by edge as the plain cell draws them, in the dtype its edges compute in
            noises = [wave.masks(states[1]) if wave.rows else None for wave in waves]
            rows = [None if n is None else n.unbind(0) if n.dim() == 5 else (n,) for n in noises]  # one op for every row
            for w, k in self._draws:
                rows[w][waves[w].rows[k]].bernoulli_(survival)
            if survival > 0.0:
                for noise in noises:
                    if noise is not None:
                        noise.div_(survival)
        outs: dict[int, torch.Tensor] = {}
        for wave, noise, wave_rows in zip(waves, noises, rows):
            outs.update(wave.run(self, states, noise, wave_rows))
            for node, ids in enumerate(self._node_edges):
                if states[node + 2] is None and all(k in outs for k in ids):
                    node_sum = outs[ids[0]]
                    for k in ids[1:]:  # in the plain cell's order
                        node_sum = node_sum + outs[k]
                    states[node + 2] = node_sum
        return torch.cat([states[i] for i in self.concat], dim=1)
