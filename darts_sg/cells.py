"""The one DARTS cell, shared by search and retraining.

A cell preprocesses its two inputs, then computes each intermediate node as the sum of its
incoming edges, and concatenates the chosen nodes. What an edge *is* comes from outside: a
``MixedOp`` over all candidate ops during search, one op after derivation. That is the only
difference between the supernet's cell and the derived network's cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import BatchNorm2d
from .layout import is_channels_last
from .ops import POOLS, FactorizedReduce, OpOptions, ReLUConvBN, build_op

__all__ = ["Cell", "EdgeOptions", "MixedOp", "WeightedSum", "drop_path"]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability `drop_prob` and rescale the rest (not in-place, any device)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * (mask / keep)


@dataclass(frozen=True)
class EdgeOptions:
    """Exact speed switches of the supernet's mixed ops (all on by default; off = the reference).

    skip_none: do not compute the `none` op (its output is zero: it adds nothing to the sum or
        to any gradient).
    share_relu: the separable and dilated convs of an edge all begin with ReLU of the same
        input; compute it once per edge instead of once per op.
    fused_sum: accumulate the softmax-weighted sum in place (one autograd node per edge)
        instead of one product and one sum tensor per op.
    """

    skip_none: bool = True
    share_relu: bool = True
    fused_sum: bool = True


def _flat_view(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """`t` as a 1-D tensor in memory order (a view for NCHW and channels-last tensors).

    With `like`, the elements are ordered as in `_flat_view(like)`, copying only if the layouts differ.
    """
    layout = like if like is not None else t
    if t.dim() == 4 and is_channels_last(layout):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


class WeightedSum(torch.autograd.Function):
    """sum_k weights[k] * terms[k], accumulated in place; saves the terms only if `weights` needs a gradient."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, *terms: torch.Tensor) -> torch.Tensor:
        out = terms[0] * weights[0]
        for k in range(1, len(terms)):
            out.addcmul_(terms[k], weights[k])
        ctx.save_for_backward(weights, *(terms if ctx.needs_input_grad[0] else ()))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, *terms = ctx.saved_tensors
        grad_weights = None
        if ctx.needs_input_grad[0]:
            flat_grad = _flat_view(grad)
            grad_weights = torch.stack([torch.dot(flat_grad, _flat_view(t, like=grad)) for t in terms]).to(weights.dtype)
        grad_terms = [grad * weights[k] if ctx.needs_input_grad[k + 1] else None for k in range(len(ctx.needs_input_grad) - 1)]
        return (grad_weights, *grad_terms)


def _drop_leading_relu(module: nn.Module) -> bool:
    """Replace the ReLU that `module` begins with (possibly nested) by an identity; True if there was one."""
    if isinstance(module, nn.Sequential) and len(module) > 0:
        if isinstance(module[0], nn.ReLU):
            module[0] = nn.Identity()
            return True
        return _drop_leading_relu(module[0])
    return False


class MixedOp(nn.Module):
    """Softmax-weighted sum of all candidate ops on one edge of the supernet.

    Pools are followed by a non-affine BN, as in the reference. `edge_options` choose exact
    shortcuts: skip `none`, one ReLU shared by the conv ops, an in-place weighted sum.

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
        edge_options: EdgeOptions | None = None,
    ):
        super().__init__()
        if C % partial_channels:
            raise ValueError(f"channels ({C}) must be divisible by --partial-channels ({partial_channels})")
        edge_options = edge_options or EdgeOptions()
        self.stride = stride
        self.partial_channels = partial_channels
        self.fused_sum = edge_options.fused_sum
        C_op = C // partial_channels
        self.active = [k for k, name in enumerate(primitives) if name != "none" or not edge_options.skip_none]
        ops, takes_relu = [], []
        for k in self.active:
            op = build_op(primitives[k], C_op, stride, affine=False, options=options)
            if primitives[k] in POOLS:
                op = nn.Sequential(op, BatchNorm2d(C_op, affine=False))
            takes_relu.append(edge_options.share_relu and _drop_leading_relu(op))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        self.takes_relu = takes_relu
        self.register_buffer("_active_index", torch.tensor(self.active, dtype=torch.long), persistent=False)
        if partial_channels > 1:
            self.bypass_pool = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        K = self.partial_channels
        xs = x if K == 1 else x[:, : x.shape[1] // K]
        relu_xs = F.relu(xs) if any(self.takes_relu) else None
        terms = [op(relu_xs if relu else xs) for op, relu in zip(self.ops, self.takes_relu)]
        if not terms:  # only `none` on this edge
            out = xs[:, :, :: self.stride, :: self.stride] * 0.0
        elif self.fused_sum:
            out = WeightedSum.apply(weights.index_select(0, self._active_index), *terms)
        else:
            out = terms[0] * weights[self.active[0]]
            for k, term in zip(self.active[1:], terms[1:]):
                out = out + weights[k] * term
        if K == 1:
            return out
        out = torch.cat([out, self.bypass_pool(x[:, x.shape[1] // K :])], dim=1)
        return channel_shuffle(out, K)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave `groups` channel groups (ShuffleNet), as PC-DARTS does after a partial op.

    The result keeps the memory layout of `x` (channels-last in, channels-last out)."""
    n, c, h, w = x.shape
    if is_channels_last(x):  # shuffle the last dimension of the (n, h, w, c) memory: one copy
        nhwc = x.permute(0, 2, 3, 1)
        return nhwc.reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c).permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


EdgeFactory = Callable[[int, int, int], nn.Module]
"""make_edge(edge_index, C, stride) -> module for that edge."""


class Cell(nn.Module):
    """A DARTS cell with `steps` intermediate nodes.

    edges: (node, input) pairs in evaluation order; node j is state j + 2, inputs index states.
    make_edge(k, C, stride): builds the module of edge k (stride 2 on edges from the cell
        inputs of a reduction cell).
    concat: the states concatenated into the output.
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
            raise ValueError("cell edges must be listed node by node")
        self.steps = max(node for node, _ in self.edge_list) + 1
        self.concat = list(concat)
        self.edges = nn.ModuleList(
            make_edge(k, C, 2 if reduction and src < 2 else 1) for k, (_, src) in enumerate(self.edge_list)
        )
        # Skip connections are exempt from drop path, as in the reference.
        self._droppable = [not isinstance(edge, nn.Identity) for edge in self.edges]

    @property
    def multiplier(self) -> int:
        return len(self.concat)

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        edge_weights: torch.Tensor | None = None,
        edge_scales: torch.Tensor | None = None,
        drop_prob: float = 0.0,
    ) -> torch.Tensor:
        """edge_weights: per-edge op weights (search); edge_scales: per-edge factors (PC-DARTS
        edge normalisation); drop_prob: drop-path probability (retraining)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        node_sums: list[torch.Tensor | None] = [None] * self.steps
        drop = drop_prob > 0.0 and self.training
        for k, ((node, src), edge) in enumerate(zip(self.edge_list, self.edges)):
            if len(states) < node + 2:  # all edges into earlier nodes are done
                states.extend(node_sums[len(states) - 2 : node])
            h = edge(states[src]) if edge_weights is None else edge(states[src], edge_weights[k])
            if edge_scales is not None:
                h = edge_scales[k] * h
            if drop and self._droppable[k]:
                h = drop_path(h, drop_prob)
            node_sums[node] = h if node_sums[node] is None else node_sums[node] + h
        states.extend(node_sums[len(states) - 2 :])
        return torch.cat([states[i] for i in self.concat], dim=1)
