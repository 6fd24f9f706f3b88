"""Batch norm that stays fast on channels-last CPU tensors with few channels or a channel count not a multiple of 16.

On the CPU, torch's channels-last batch-norm kernels are fast when the channel count is a
multiple of 16 and several times slower otherwise (C = 36 and 72 of the DARTS retraining network,
C = 8 of a narrow sandglass block; see ``benchmarks/bench_kernels.py``); at 16 channels and fewer
they are slower than on a wider view (at C=16, 32x32, batch 64: forward 0.45-0.49 ms against
0.32-0.37 ms 64 columns wide, backward the same within the noise; the darts first-order step 1.09x
faster: benchmarks/results.md, run 8). A channels-last tensor is
an ``(N*H*W, C)`` matrix in memory, so it can be viewed, without a copy, as an ``(N*H*W/k, k*C)``
matrix whose width is a multiple of 16 (of 64 for C <= 16). On that wide view the native kernels run at full speed;
the statistics of its ``k*C`` columns are merged into those of the ``C`` channels, and the
normalisation and the gradient are elementwise passes with per-column factors. The result is the
same batch norm (same outputs, gradients and running statistics, up to float rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_channels_last

__all__ = [
    "UncountedBatchNorm2d", "WideBatchNorm2d", "batch_norm_grads", "batch_stats", "graph_grads", "normalized", "update_running_stats", "wide_factor",
]

_VECTOR_WIDTH = 16
_NARROW_WIDTH = 64  # for C <= 16
_NARROW = 16


def wide_factor(x: torch.Tensor) -> int:
    """How many pixels one row of the wide view holds (1: use the native kernel as it is)."""
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.float64):
        return 1
    n, c, h, w = x.shape
    if not is_channels_last(x):
        return 1
    widths = (_NARROW_WIDTH, _VECTOR_WIDTH) if c <= _NARROW else (_VECTOR_WIDTH,)
    for width in widths:
        k = width // math.gcd(c, width)
        if (n * h * w) % k == 0:
            return k
    return 1


def _wide(x: torch.Tensor, k: int) -> torch.Tensor:
    """The channels-last tensor `x` as an (N*H*W/k, k*C) matrix (a view)."""
    return x.permute(0, 2, 3, 1).reshape(-1, k * x.shape[1])


def _unwide(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of `_wide`: a channels-last (N, C, H, W) view of the matrix `m`."""
    n, c, h, w = like.shape
    return m.view(n, h, w, c).permute(0, 3, 1, 2)


def _columns(per_channel: torch.Tensor, k: int) -> torch.Tensor:
    """A per-channel vector repeated for the k pixels of a wide-view row (``torch.cat``: a third of ``repeat``'s time)."""
    return torch.cat([per_channel] * k)


def normalized(x: torch.Tensor, k: int, mean, invstd, weight, bias, into: torch.Tensor | None = None) -> torch.Tensor:
    """(x - mean) * invstd * weight + bias per channel, as one pass (over the wide view of `x` when k > 1).

    With `into` (a tensor laid out like `x`), the result is written into it and `into` is returned:
    a tensor of its own rather than a view, which the training Function needs so that the next
    layer may work in place on its output (an in-place ReLU6).
    """
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    if not is_channels_last(x):  # k == 1: broadcast over the channel dimension
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1), out=into)
    if into is None:
        return _unwide(torch.addcmul(_columns(shift, k), _wide(x, k), _columns(scale, k)), x)
    torch.addcmul(_columns(shift, k), _wide(x, k), _columns(scale, k), out=_wide(into, k))
    return into


def batch_stats(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of `x`, computed on its wide view when k > 1."""
    if k == 1:
        return torch.ops.aten.batch_norm_update_stats(x, None, None, 0.0)
    C = x.shape[1]
    # per-column batch mean and biased variance, without the normalised output native_batch_norm also writes
    mean_cols, var_cols = torch.ops.aten.batch_norm_update_stats(_wide(x, k), None, None, 0.0)
    mean_cols, var_cols = mean_cols.view(k, C), var_cols.view(k, C)
    mean = mean_cols.mean(0)
    var = var_cols.mean(0) + (mean_cols - mean).pow(2).mean(0)  # every column has N*H*W/k rows
    return mean, var


def batch_norm_grads(grad_out, x, k: int, mean, invstd, weight, eps: float, needs: tuple[bool, bool, bool]):
    """Gradients of a training-mode batch norm with respect to (x, weight, bias), None where not `needs`.

    k = 1: torch's own backward kernel; k > 1: its reductions on the wide view, then one elementwise pass.
    """
    if k == 1:
        grads = torch.ops.aten.native_batch_norm_backward(grad_out, x, weight, None, None, mean, invstd, True, eps, list(needs))
        return tuple(g if need else None for g, need in zip(grads, needs))
    C, count = x.shape[1], x.numel() // x.shape[1]
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    gw, xw = _wide(grad_out, k), _wide(x, k)
    ones = torch.ones(k * C, dtype=x.dtype)
    # sum(g * xhat) and sum(g) per column, by the native kernel
    _, dot_cols, sum_cols = torch.ops.aten.native_batch_norm_backward(
        gw, xw, ones, None, None, _columns(mean, k), _columns(invstd, k), True, eps, [False, True, True]
    )
    dot, total = dot_cols.view(k, C).sum(0), sum_cols.view(k, C).sum(0)
    grad_x = None
    if needs[0]:
        # dx = a * (g - mean(g) - xhat * mean(g * xhat)) = a*g + b*x + c
        a = invstd if weight is None else invstd * weight
        b = -a * invstd * dot / count
        c = -a * total / count - b * mean
        grad_x = _unwide(torch.addcmul(_columns(c, k), gw, _columns(a, k)).addcmul_(xw, _columns(b, k)), x)
    return grad_x, dot if needs[1] else None, total if needs[2] else None


class _WideBatchNorm(torch.autograd.Function):
    """Training-mode batch norm computed on the wide view; also returns the batch mean and biased variance."""

    @staticmethod
    def forward(ctx, x, weight, bias, k: int, eps: float):
        mean, var = batch_stats(x, k)
        invstd = torch.rsqrt(var + eps)
        out = normalized(x, k, mean, invstd, weight, bias, into=torch.empty_like(x, memory_format=torch.channels_last))
        ctx.k, ctx.eps = k, eps
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate torch's own batch norm instead
            out = F.batch_norm(x, None, None, weight, bias, True, 0.0, ctx.eps)
            return (*graph_grads(out, grad_out, (x, weight, bias), ctx.needs_input_grad[:3]), None, None)
        grads = batch_norm_grads(grad_out, x, ctx.k, mean, invstd, weight, ctx.eps, tuple(ctx.needs_input_grad[:3]))
        return (*grads, None, None)


def graph_grads(out: torch.Tensor, grad_out: torch.Tensor, inputs: tuple, needs: tuple) -> tuple:
    """A custom Function's gradients as a graph of their own (for higher derivatives): those of `out`, recomputed with
    the plain functions, for each of `inputs` whose `needs` flag is set (None for the others)."""
    grads = iter(torch.autograd.grad(out, [t for t, need in zip(inputs, needs) if need], grad_out, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)


class WideBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and results) with the wide-view CPU path.

    The wide view is used only where `wide_factor` finds a channels-last CPU tensor with at most 16
    channels or a channel count not a multiple of 16; elsewhere this is torch's batch norm. ``darts_sg.speed.accelerate``
    puts it in place of ``nn.BatchNorm2d`` (``--fast-batchnorm``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = wide_factor(x)
        if k == 1:
            return super().forward(x)
        self._check_input_dim(x)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            invstd = torch.rsqrt(self.running_var + self.eps)
            return normalized(x, k, self.running_mean, invstd, self.weight, self.bias)
        out, mean, var = _WideBatchNorm.apply(x, self.weight, self.bias, k, self.eps)
        if self.training and self.track_running_stats:
            update_running_stats(self, mean, var, x.numel() // x.shape[1])
        return out


class UncountedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a momentum set, minus its batch counter: one op less per batch norm and step.

    With a momentum, torch's batch norm increments ``num_batches_tracked`` in training but never
    reads it (the counter only sets the factor of a cumulative average, ``momentum=None``). This
    one leaves the counter as it was and computes the rest as torch does: same outputs, gradients,
    running statistics and state-dict keys. ``darts_sg.speed.accelerate`` puts it in place of ``nn.BatchNorm2d`` (``--uncounted-batchnorm``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.momentum is not None):
            return super().forward(x)
        self._check_input_dim(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps)


@torch.no_grad()
def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Move `bn`'s running statistics towards a batch's, as nn.BatchNorm2d does (momentum or cumulative average)."""
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    unbiased = var * (count / max(count - 1, 1))
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
    bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
