"""Batch norm, ReLU6 and the convolution after them, keeping only the batch norm's input for backward.

In the sandglass and inverted-residual blocks every batch norm but the last is followed by a
convolution, with a ReLU6 between them or not. Autograd keeps two tensors of each such run for
the backward pass: the batch norm's input (for its own gradient) and the convolution's input
(the normalised, clamped activation, for the weight gradient). The second is a cheap function
of the first: one elementwise pass with the batch statistics. `norm_act_conv` keeps the batch
norm's input and its statistics, and recomputes the convolution's input during the backward
pass, with the same kernel on the same values as in the forward pass, so the recomputed tensor
is the forward's bit for bit. The gradients come from the kernels the plain modules' backward
calls (``convolution_backward``, ``hardtanh_backward``, the batch-norm backward of
``darts_sg.speed.batchnorm``); the results equal the plain modules' up to float rounding (the batch
norm's output is computed as ``WideBatchNorm2d`` computes it).

`LeanSequential` is an ``nn.Sequential`` that runs each batch norm - [ReLU6] - convolution run of
its children this way while training; ``darts_sg.speed.accelerate`` puts it in place of the bodies of the
two blocks (``--lean-blocks``). A sandglass edge (C=16, 32x32, batch 64) keeps 14 instead of 24
MiB, an inverted residual 52 instead of 100 MiB (``benchmarks/profile_edge.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import batch_norm_grads, batch_stats, graph_grads, normalized, update_running_stats, wide_factor

__all__ = ["LeanSequential", "norm_act_conv"]


def _activation(bn_out: torch.Tensor, relu6: bool) -> torch.Tensor:
    return bn_out.clamp_(0.0, 6.0) if relu6 else bn_out


class _NormActConv(torch.autograd.Function):
    """conv(relu6?(batch_norm(x))) in training mode; saves x and the batch statistics, not the conv's input."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, conv_weight, eps: float, relu6: bool, conv: tuple):
        k = wide_factor(x)
        mean, var = batch_stats(x, k)
        invstd = torch.rsqrt(var + eps)
        hidden = _activation(normalized(x, k, mean, invstd, bn_weight, bn_bias), relu6)
        stride, padding, dilation, groups = conv
        out = F.conv2d(hidden, conv_weight, None, stride, padding, dilation, groups)
        ctx.k, ctx.eps, ctx.relu6, ctx.conv = k, eps, relu6, conv
        ctx.save_for_backward(x, bn_weight, bn_bias, conv_weight, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, bn_weight, bn_bias, conv_weight, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain modules instead
            return _differentiable_grads(ctx, grad_out, x, bn_weight, bn_bias, conv_weight)
        hidden = _activation(normalized(x, ctx.k, mean, invstd, bn_weight, bn_bias), ctx.relu6)
        stride, padding, dilation, groups = ctx.conv
        grad_hidden, grad_conv_weight, _ = torch.ops.aten.convolution_backward(
            grad_out, hidden, conv_weight, None, stride, padding, dilation, False, [0, 0], groups,
            [True, ctx.needs_input_grad[3], False],
        )
        if ctx.relu6:
            grad_hidden = torch.ops.aten.hardtanh_backward(grad_hidden, hidden, 0.0, 6.0)
        needs = tuple(ctx.needs_input_grad[:3])
        grad_x, grad_bn_weight, grad_bn_bias = batch_norm_grads(grad_hidden, x, ctx.k, mean, invstd, bn_weight, ctx.eps, needs)
        return grad_x, grad_bn_weight, grad_bn_bias, grad_conv_weight, None, None, None


def _differentiable_grads(ctx, grad_out, x, bn_weight, bn_bias, conv_weight):
    """The gradients as a graph of their own (for higher derivatives), through the plain functions."""
    hidden = F.batch_norm(x, None, None, bn_weight, bn_bias, True, 0.0, ctx.eps)
    if ctx.relu6:
        hidden = F.hardtanh(hidden, 0.0, 6.0)
    stride, padding, dilation, groups = ctx.conv
    out = F.conv2d(hidden, conv_weight, None, stride, padding, dilation, groups)
    grads = graph_grads(out, grad_out, (x, bn_weight, bn_bias, conv_weight), ctx.needs_input_grad[:4])
    return (*grads, None, None, None)


def norm_act_conv(x: torch.Tensor, bn: nn.BatchNorm2d, relu6: bool, conv: nn.Conv2d) -> torch.Tensor:
    """conv(relu6(bn(x))) (without the ReLU6 when `relu6` is False) for a training-mode `bn` using batch statistics.

    Moves `bn`'s running statistics as its own forward would.
    """
    spec = (conv.stride, conv.padding, conv.dilation, conv.groups)
    out, mean, var = _NormActConv.apply(x, bn.weight, bn.bias, conv.weight, bn.eps, relu6, spec)
    if bn.track_running_stats:
        update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return out


def _is_plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.bias is None and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def _runs(children: list[nn.Module]) -> list[tuple[int, int]]:
    """(start, stop) of each batch norm - [ReLU6] - plain convolution run among `children`."""
    runs, i = [], 0
    while i < len(children):
        stop = i + 3 if i + 2 < len(children) and isinstance(children[i + 1], nn.ReLU6) else i + 2
        if isinstance(children[i], nn.BatchNorm2d) and stop <= len(children) and _is_plain_conv(children[stop - 1]):
            runs.append((i, stop))
            i = stop
        else:
            i += 1
    return runs


def _lean_applies(x: torch.Tensor) -> bool:
    """A gradient is wanted and `x` is computed in full precision (under autocast the plain modules run)."""
    full_precision = x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type)
    return torch.is_grad_enabled() and full_precision


class LeanSequential(nn.Sequential):
    """``nn.Sequential`` (same children and results) whose batch norm - [ReLU6] - conv runs keep only the norm's input.

    A run is computed by `norm_act_conv` while its batch norm trains on batch statistics and a
    gradient is wanted; otherwise, and for every other child, the children run as they are.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        children = list(self)
        lean = {start: stop for start, stop in _runs(children)}
        i = 0
        while i < len(children):
            stop = lean.get(i)
            bn = children[i]
            if stop is not None and bn.training and _lean_applies(x):
                x = norm_act_conv(x, bn, stop - i == 3, children[stop - 1])
                i = stop
            else:
                x = children[i](x)
                i += 1
        return x
