import pytest
import torch
from torch import nn

import darts_sg
from darts_sg.model.measure import flop_counter


def _count(fn):
    counter = flop_counter()
    with counter:
        fn()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("groups", [1, 4, 16], ids=["dense", "grouped", "depthwise"])
def test_each_conv_gradient_costs_one_forward(groups):
    conv = nn.Conv2d(16, 32, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    counts = _count(lambda: conv(x).sum().backward())
    forward = 2 * 2 * 32 * 8 * 8 * (16 // groups) * 9  # 2 FLOPs x outputs x multiply-adds per output
    assert counts["aten.convolution"] == forward
    assert counts["aten.convolution_backward"] == 2 * forward  # input gradient + weight gradient


def test_weight_gradient_only_when_the_input_needs_none():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 8, 8)  # no gradient for the input
    counts = _count(lambda: conv(x).sum().backward())
    assert counts["aten.convolution_backward"] == counts["aten.convolution"]


def test_supernet_training_step_is_three_forwards_of_convolution():
    torch.manual_seed(0)
    model = darts_sg.build_supernet("darts", C=4, layers=3, num_classes=10)
    x = torch.randn(2, 3, 16, 16)
    forward = _count(lambda: model(x))["aten.convolution"]
    stem = 2 * 2 * 12 * 16 * 16 * 3 * 9  # the stem conv's input needs no gradient
    counts = _count(lambda: model(x).sum().backward())
    assert counts["aten.convolution_backward"] == 2 * forward - stem
