"""What a network costs: FLOPs of forward and backward passes (a multiply-add counts 2), CPU latency.

torch's `FlopCounterMode` counts the weight gradient of a grouped convolution as if the
convolution were dense (torch 2.14: `conv_backward_flop` ignores `groups`), which overstates a
depthwise convolution's weight gradient by a factor of its channel count. `flop_counter()`
returns a counter with a corrected formula: each gradient of a convolution (input or weight)
costs exactly the multiply-adds of the forward convolution.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["conv_forward_flops", "conv_backward_flops", "cpu_latency_ms", "flop_counter", "flops_per_image"]


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


@torch.no_grad()
def flops_per_image(model: torch.nn.Module, device: torch.device, image_size: int = 32) -> int:
    """Forward FLOPs for one image of `image_size` pixels square (torch's flop counter; a multiply-add counts 2)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def cpu_latency_ms(
    model: torch.nn.Module, batch: int = 1, repeats: int = 10, channels_last: bool = True, image_size: int = 32
) -> float:
    """Median CPU inference latency per image in milliseconds (eval mode, after warm-up)."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch, 3, image_size, image_size)
    if channels_last:
        cpu_model = cpu_model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        cpu_model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        cpu_model(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000 / batch
