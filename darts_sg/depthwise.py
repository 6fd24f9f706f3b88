"""5x5 depthwise convolutions whose weight gradient is computed as four 3x3 ones: a CPU substitute.

On the CPU, oneDNN's weight gradient of a 5x5 depthwise convolution takes 26 times that of a 3x3
one for 2.8 times the arithmetic (C=16, 32x32, batch 96: 6.3 against 0.24 ms; `python
benchmarks/bench_kernels.py --only depthwise`). The 5x5 weight gradient is the correlation of
the output gradient with the padded input at 5 x 5 offsets; rows 0-2 and 3-4 and columns 0-2 and
3-4 of it are the gradients of four 3x3 convolutions over crops of the padded input, which
oneDNN computes fast. The forward pass and the input gradient are torch's. Same values up to
float rounding (the sums run in another order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_channels_last
from .polyphase import PolyphaseDilatedConv2d

__all__ = ["FastDepthwiseConv2d", "FastPolyphaseDilatedConv2d", "depthwise_conv2d", "is_depthwise_5x5"]

# (first row or column of a 3x3 crop in the 5x5 kernel, the kernel rows or columns it supplies)
_QUADRANTS = ((0, slice(0, 3)), (2, slice(3, 5)))


def _weight_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """The gradient of a 5x5 depthwise convolution's weight, from four 3x3 weight gradients."""
    C, (h_out, w_out) = x.shape[1], grad_out.shape[2:]
    padded = F.pad(x, (padding,) * 4)
    layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    weight3 = weight.new_empty(C, 1, 3, 3).contiguous(memory_format=layout)  # only its shape matters to the gradient
    grad = torch.empty_like(weight)
    for top, rows in _QUADRANTS:
        for left, cols in _QUADRANTS:
            crop = padded[:, :, top : top + stride * (h_out - 1) + 3, left : left + stride * (w_out - 1) + 3]
            _, grad3, _ = torch.ops.aten.convolution_backward(
                grad_out, crop, weight3, None, [stride] * 2, [0, 0], [1, 1], False, [0, 0], C, [False, True, False]
            )
            grad[:, :, rows, cols] = grad3[:, :, rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    return grad


class _Depthwise5x5(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride: int, padding: int):
        ctx.stride, ctx.padding = stride, padding
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        s, p, C = ctx.stride, ctx.padding, x.shape[1]
        if torch.is_grad_enabled():  # create_graph=True: differentiate torch's convolution instead
            wanted = [t for t, need in zip((x, weight), ctx.needs_input_grad[:2]) if need]
            grads = iter(torch.autograd.grad(F.conv2d(x, weight, None, s, p, 1, C), wanted, grad_out, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:2]), None, None)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], C, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(grad_out, x, weight, s, p)
        return grad_x, grad_weight, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Depthwise convolution (groups = channels, no bias); a 5x5 one on the CPU gets the fast weight gradient."""
    if weight.shape[-2:] == (5, 5) and x.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad:
        return _Depthwise5x5.apply(x, weight, stride, padding)
    return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])


def is_depthwise_5x5(conv: nn.Module) -> bool:
    """True for a plain undilated 5x5 depthwise ``nn.Conv2d`` with square stride and padding (what the substitute replaces)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (5, 5)
        and conv.dilation == (1, 1)
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.stride[0] == conv.stride[1]
    )


class FastDepthwiseConv2d(nn.Conv2d):
    """A 5x5 depthwise ``nn.Conv2d`` (same parameters and results) whose weight gradient is four 3x3 ones on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0])


class FastPolyphaseDilatedConv2d(PolyphaseDilatedConv2d):
    """`PolyphaseDilatedConv2d` whose undilated 5x5 convolution gets the fast weight gradient."""

    def _undilated(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, 1, padding)
