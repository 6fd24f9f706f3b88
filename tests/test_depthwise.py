"""The 5x5 depthwise substitute: torch's convolution, with the weight gradient as four 3x3 ones."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

import darts_sg
from darts_sg.accelerate import accelerate, device_policy
from darts_sg.depthwise import FastDepthwiseConv2d, FastPolyphaseDilatedConv2d, is_depthwise_5x5
from darts_sg.ops import build_op
from darts_sg.polyphase import PolyphaseDilatedConv2d

CPU = torch.device("cpu")
CL = torch.channels_last


def _grads(module, x):
    out = module(x)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=CL)
    return [out, *torch.autograd.grad(out, [x, module.weight], grad)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_values_and_gradients_match_torchs_conv(stride, size, layout):
    torch.manual_seed(0)
    plain = nn.Conv2d(6, 6, 5, stride, 2, groups=6, bias=False).double()
    fast = copy.deepcopy(plain)
    fast.__class__ = FastDepthwiseConv2d
    x = torch.randn(3, 6, size, size, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    for a, b in zip(_grads(fast, x), _grads(plain, x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_second_derivatives_match_torchs_conv():
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 4, 5, 1, 2, groups=4, bias=False).double()
    fast = copy.deepcopy(plain)
    fast.__class__ = FastDepthwiseConv2d
    results = []
    for module in (fast, plain):
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        (g,) = torch.autograd.grad((module(x) ** 2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad((g**2).sum(), [x, module.weight]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_which_convs_it_replaces():
    assert is_depthwise_5x5(nn.Conv2d(8, 8, 5, 2, 2, groups=8, bias=False))
    assert not is_depthwise_5x5(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False))  # 3x3 is fast already
    assert not is_depthwise_5x5(nn.Conv2d(8, 8, 5, 1, 4, dilation=2, groups=8, bias=False))  # dilated: polyphase
    assert not is_depthwise_5x5(nn.Conv2d(8, 16, 5, 1, 2, groups=8, bias=False))  # not depthwise
    assert not is_depthwise_5x5(nn.Conv2d(8, 8, 5, 1, 2, groups=8, bias=True))


def test_accelerate_swaps_the_5x5_convs_of_both_ops():
    cpu, policy = CPU, device_policy("cpu")
    sep = accelerate(build_op("sep_conv_5x5", 8, 1, affine=False), cpu, policy)
    dil = accelerate(build_op("dil_conv_5x5", 8, 1, affine=False), cpu, policy)
    assert sum(type(m) is FastDepthwiseConv2d for m in sep.modules()) == 2
    assert sum(type(m) is FastPolyphaseDilatedConv2d for m in dil.modules()) == 1
    off = dataclasses.replace(policy, fast_depthwise=False)
    assert not any(type(m) is FastDepthwiseConv2d for m in accelerate(build_op("sep_conv_5x5", 8, 1, affine=False), cpu, off).modules())
    dil_off = accelerate(build_op("dil_conv_5x5", 8, 1, affine=False), cpu, off)
    assert any(type(m) is PolyphaseDilatedConv2d for m in dil_off.modules())


def test_a_supernet_step_matches_the_native_gradient():
    """The whole darts supernet (sep_conv_5x5 and dil_conv_5x5 on every edge, strides 1 and 2) against --native-depthwise."""
    torch.manual_seed(0)
    plain = darts_sg.build_supernet("darts", C=4, layers=3, num_classes=10, steps=2).double()
    policy = device_policy("cpu")
    fast = accelerate(copy.deepcopy(plain), CPU, policy)
    plain = accelerate(plain, CPU, dataclasses.replace(policy, fast_depthwise=False))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=CL)
    grads = []
    for model in (fast, plain):
        model(x).logsumexp(1).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    assert sum(type(m) in (FastDepthwiseConv2d, FastPolyphaseDilatedConv2d) for m in fast.modules()) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
