"""Ops whose gradient keeps the memory layout of their input.

torch's backward of a slice (``x[:, :, 1:, 1:]``) and of adaptive average pooling returns an
NCHW gradient even for a channels-last input. Every kernel behind it in the backward pass then
gets mixed layouts and runs several times slower on the CPU (batch norm and ReLU backward among
them). These give the same values and gradients, in the input's layout; the two modules at the
end are the exact substitutes that ``darts_sg.speed.accelerate`` puts in place of the plain factorized
reduce and global pooling (``--keep-layout``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.ops import FactorizedReduce

__all__ = [
    "LayoutKeepingFactorizedReduce",
    "LayoutKeepingGlobalPool",
    "global_avg_pool",
    "is_channels_last",
    "stride2_samples",
    "subsample",
]


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels-last (and not also NCHW, as with C = 1 or H = W = 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


class _Subsample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, step: int, offsets: tuple[int, ...]):
        ctx.input_shape, ctx.layout, ctx.step, ctx.offsets = x.shape, _layout(x), step, offsets
        return tuple(x[:, :, o::step, o::step].contiguous(memory_format=ctx.layout) for o in offsets)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        grad = torch.empty(ctx.input_shape, dtype=grads[0].dtype, device=grads[0].device, memory_format=ctx.layout).zero_()
        for o, g in zip(ctx.offsets, grads):
            grad[:, :, o :: ctx.step, o :: ctx.step] = g
        return grad, None, None


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether autograd records this op; without it (inference, tracing, export) the plain torch ops run."""
    return torch.is_grad_enabled() and x.requires_grad


def subsample(x: torch.Tensor, step: int, offsets: tuple[int, ...] = (0,)) -> tuple[torch.Tensor, ...]:
    """x[:, :, o::step, o::step] for each offset o, as tensors in x's layout (as is their gradient)."""
    if not _needs_grad(x):
        return tuple(x[:, :, o::step, o::step].contiguous(memory_format=_layout(x)) for o in offsets)
    return _Subsample.apply(x, step, tuple(offsets))


def stride2_samples(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]): the pixels a stride-2 1x1 conv reads on x and on x[:, :, 1:, 1:]."""
    return subsample(x, 2, (0, 1))


class _GlobalAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor):
        ctx.input_shape, ctx.layout = x.shape, _layout(x)
        return x.mean(dim=(2, 3))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.input_shape
        return (grad / (h * w))[:, :, None, None].expand(n, c, h, w).contiguous(memory_format=ctx.layout)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial dimensions: (N, C, H, W) -> (N, C)."""
    if not _needs_grad(x):
        return x.mean(dim=(2, 3))
    return _GlobalAvgPool.apply(x)


class LayoutKeepingFactorizedReduce(FactorizedReduce):
    """``FactorizedReduce`` whose 1x1 convs run at stride 1 on the pixels a stride-2 conv reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        even, odd = stride2_samples(self.relu(x))
        return self.bn(torch.cat([F.conv2d(even, self.conv_1.weight), F.conv2d(odd, self.conv_2.weight)], dim=1))


class LayoutKeepingGlobalPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` computed by `global_avg_pool`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)[:, :, None, None]
