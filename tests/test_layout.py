"""The layout-keeping ops give torch's values and gradients, with gradients in the input's layout."""

import pytest
import torch
import torch.nn.functional as F

from darts_sg.speed.layout import (
    LayoutKeepingFactorizedReduce,
    LayoutKeepingGlobalPool,
    global_avg_pool,
    stride2_samples,
    subsample,
)
from darts_sg.model.ops import FactorizedReduce

CL = torch.channels_last


@pytest.mark.parametrize("size", [(6, 6), (7, 5)])
@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_stride2_samples_match_strided_1x1_convs(size, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    w1, w2 = torch.randn(4, 3, 1, 1, dtype=torch.float64), torch.randn(4, 3, 1, 1, dtype=torch.float64)
    even, odd = stride2_samples(x)
    ours = (F.conv2d(even, w1), F.conv2d(odd, w2))
    theirs = (F.conv2d(x, w1, stride=2), F.conv2d(x[:, :, 1:, 1:], w2, stride=2))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    grads = [torch.autograd.grad(sum((o * o).sum() for o in outs), x)[0] for outs in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].is_contiguous(memory_format=layout)


def test_global_avg_pool_matches_adaptive_pool():
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(True)
    ours, theirs = global_avg_pool(x), F.adaptive_avg_pool2d(x, 1).flatten(1)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    grads = [torch.autograd.grad(out, x, g)[0] for out in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].is_contiguous(memory_format=CL) and not grads[0].is_contiguous()


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_layout_keeping_factorized_reduce_equals_the_plain_one(size):
    torch.manual_seed(0)
    plain = FactorizedReduce(4, 6).double().to(memory_format=CL)
    ours = LayoutKeepingFactorizedReduce(4, 6).double().to(memory_format=CL)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, *size, dtype=torch.float64).contiguous(memory_format=CL)
    outs, grads = [], []
    for op in (ours, plain):
        xi = x.clone().requires_grad_(True)
        out = op(xi)
        (out * out).sum().backward()
        outs.append(out)
        grads.append(xi.grad)
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].is_contiguous(memory_format=CL) and not grads[0].is_contiguous()


def test_layout_keeping_global_pool_equals_adaptive_pool():
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(True)
    ours, theirs = LayoutKeepingGlobalPool(1)(x), torch.nn.AdaptiveAvgPool2d(1)(x)
    assert ours.shape == theirs.shape == (2, 5, 1, 1)
    torch.testing.assert_close(ours, theirs)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    assert grad.is_contiguous(memory_format=CL) and not grad.is_contiguous()


def test_subsample_matches_slicing():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(True)
    (ours,) = subsample(x, 3, (2,))
    theirs = x[:, :, 2::3, 2::3]
    torch.testing.assert_close(ours, theirs)
    grads = [torch.autograd.grad((t * t).sum(), x)[0] for t in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].is_contiguous(memory_format=CL)
