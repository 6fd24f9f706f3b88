"""Counting FLOPs of forward and backward passes (a multiply-add counts 2).

torch's `FlopCounterMode` counts the weight gradient of a grouped convolution as if the
convolution were dense (torch 2.14: `conv_backward_flop` ignores `groups`), which overstates a
depthwise convolution's weight gradient by a factor of its channel count. `flop_counter()`
returns a counter with a corrected formula: each gradient of a convolution (input or weight)
costs exactly the multiply-adds of the forward convolution.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["conv_forward_flops", "conv_backward_flops", "flop_counter"]


def conv_forward_flops(x_shape, w_shape, out_shape, transposed: bool = False) -> int:
    """FLOPs of a (possibly grouped) convolution: 2 x outputs x (input channels per group x kernel)."""
    batch = x_shape[0]
    if transposed:
        # Every input element meets C_out/groups x kernel weights.
        per_group_out, kernel = w_shape[1], math.prod(w_shape[2:])
        return 2 * batch * math.prod(x_shape[1:]) * per_group_out * kernel
    per_group_in, kernel = w_shape[1], math.prod(w_shape[2:])
    return 2 * batch * math.prod(out_shape[1:]) * per_group_in * kernel


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:  # fmt: skip
    """FLOPs of `aten.convolution_backward`: one forward's worth per requested gradient (input, weight)."""
    forward = conv_forward_flops(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """A quiet `FlopCounterMode` whose convolution backward is counted correctly for grouped convs."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
