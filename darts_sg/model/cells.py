"""The one DARTS cell, shared by search and retraining.

A cell preprocesses its two inputs, then computes each intermediate node as the sum of its
incoming edges, and concatenates the chosen nodes. What an edge *is* comes from outside: a
``MixedOp`` over all candidate ops during search, one op after derivation. That is the only
difference between the supernet's cell and the derived network's cell.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..utils.errors import UserError
from .ops import POOLS, FactorizedReduce, OpOptions, ReLUConvBN, build_op

__all__ = ["Cell", "DropPath", "MixedOp"]


class DropPath(nn.Module):
    """Drop path: in training, zero whole samples with probability `p` and rescale the rest.

    torchvision's row-wise stochastic depth; `p` is set from outside (retraining ramps it up).
    torchvision is imported on the first drop (importing it takes ~2 s, which a search, an
    evaluation or a command-line error never needs).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        from torchvision.ops import stochastic_depth

        return stochastic_depth(x, self.p, "row", training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MixedOp(nn.Module):
    """Softmax-weighted sum of all candidate ops on one edge of the supernet.

    Pools are followed by a non-affine BN, as in the reference. With ``skip_none`` the zero op
    is not built at all: its output adds nothing to the sum or to any gradient. (This is a
    construction option, not a device substitute: it changes the state-dict layout, so it is
    fixed for a run.)

    With ``partial_channels`` K > 1 (PC-DARTS), only the first C/K channels go through the ops;
    the rest bypass them, and the channels are shuffled afterwards so that every channel takes
    its turn.
    """

    def __init__(
        self,
        C: int,
        stride: int,
        primitives: Sequence[str],
        options: OpOptions,
        partial_channels: int = 1,
        skip_none: bool = True,
    ):
        super().__init__()
        if C % partial_channels:
            raise UserError(f"channels ({C}) must be divisible by --partial-channels ({partial_channels})")
        self.stride = stride
        self.partial_channels = partial_channels
        C_op = C // partial_channels
        self.active = [k for k, name in enumerate(primitives) if name != "none" or not skip_none]
        ops = []
        for k in self.active:
            op = build_op(primitives[k], C_op, stride, affine=False, options=options)
            if primitives[k] in POOLS:
                op = nn.Sequential(op, nn.BatchNorm2d(C_op, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        if partial_channels > 1:
            self.bypass_pool = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()
            self.shuffle = nn.ChannelShuffle(partial_channels)  # ShuffleNet's; keeps a channels-last layout

    def op_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every computed op on `x`."""
        return [op(x) for op in self.ops]

    def weighted_sum(self, terms: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """sum_k weights[k] * terms[k] over the computed ops."""
        w = weights.unbind(0)
        out = terms[0] * w[self.active[0]]
        for k, term in zip(self.active[1:], terms[1:]):
            out = out + w[k] * term
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        K = self.partial_channels
        xs = x if K == 1 else x[:, : x.shape[1] // K]
        if self.ops:
            out = self.weighted_sum(self.op_outputs(xs), weights)
        else:  # only `none` on this edge
            out = xs[:, :, :: self.stride, :: self.stride] * 0.0
        if K == 1:
            return out
        out = torch.cat([out, self.bypass_pool(x[:, x.shape[1] // K :])], dim=1)
        return self.shuffle(out)


EdgeFactory = Callable[[int, int, int], nn.Module]
"""make_edge(edge_index, C, stride) -> module for that edge."""


class Cell(nn.Module):
    """A DARTS cell with `steps` intermediate nodes.

    edges: (node, input) pairs in evaluation order; node j is state j + 2, inputs index states.
    make_edge(k, C, stride): builds the module of edge k (stride 2 on edges from the cell
        inputs of a reduction cell).
    concat: the states concatenated into the output.
    drop_path: give the edges a drop path (the derived network; the supernet never sets one).
    """

    def __init__(
        self,
        C_pp: int,
        C_p: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        edges: Sequence[tuple[int, int]],
        concat: Sequence[int],
        make_edge: EdgeFactory,
        affine: bool,
        drop_path: bool = True,
    ):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_pp, C, affine=affine)
        else:
            self.preprocess0 = ReLUConvBN(C_pp, C, 1, 1, 0, affine=affine)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=affine)
        self.edge_list = [(int(node), int(src)) for node, src in edges]
        if any(a[0] > b[0] for a, b in zip(self.edge_list, self.edge_list[1:])):
            raise UserError("cell edges must be listed node by node")
        self.steps = max(node for node, _ in self.edge_list) + 1
        self.concat = list(concat)
        self.edges = nn.ModuleList(
            make_edge(k, C, 2 if reduction and src < 2 else 1) for k, (_, src) in enumerate(self.edge_list)
        )
        # Skip connections are exempt from drop path, as in the reference.
        self.drop_paths = nn.ModuleList(
            DropPath() if drop_path and not isinstance(edge, nn.Identity) else nn.Identity() for edge in self.edges
        )

    @property
    def multiplier(self) -> int:
        return len(self.concat)

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        edge_weights: torch.Tensor | None = None,
        edge_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """edge_weights: per-edge op weights (search); edge_scales: per-edge factors (PC-DARTS
        edge normalisation)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        node_sums: list[torch.Tensor | None] = [None] * self.steps
        weights = None if edge_weights is None else edge_weights.unbind(0)  # one op for every edge's row
        scales = None if edge_scales is None else edge_scales.unbind(0)
        for k, ((node, src), edge) in enumerate(zip(self.edge_list, self.edges)):
            if len(states) < node + 2:  # all edges into earlier nodes are done
                states.extend(node_sums[len(states) - 2 : node])
            h = edge(states[src]) if weights is None else edge(states[src], weights[k])
            if scales is not None:
                h = scales[k] * h
            h = self.drop_paths[k](h)
            node_sums[node] = h if node_sums[node] is None else node_sums[node] + h
        states.extend(node_sums[len(states) - 2 :])
        return torch.cat([states[i] for i in self.concat], dim=1)
