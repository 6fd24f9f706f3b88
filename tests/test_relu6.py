"""LeanReLU6: torch's ReLU6, bit for bit, keeping only its output for the backward pass."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from darts_sg.speed.accelerate import accelerate, device_policy
from darts_sg.train.memory import counting_saved_bytes
from darts_sg.model.ops import OpOptions, build_op
from darts_sg.speed.relu6 import LeanReLU6

EDGES = torch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0, float("nan")])  # both bounds exactly, and NaN


def _values_and_grads(module, x, grad, create_graph=False):
    x = x.clone().requires_grad_(True)
    out = module(x * 1.0)  # a non-leaf, so that an in-place module may write to it
    (gx,) = torch.autograd.grad(out, x, grad, create_graph=create_graph)
    return out, gx


@pytest.mark.parametrize("inplace", [False, True])
def test_values_and_gradients_are_torchs_bit_for_bit(inplace):
    torch.manual_seed(0)
    x = torch.cat([EDGES, 5 * torch.randn(200)])
    grad = torch.randn_like(x)
    lean = LeanReLU6(inplace=inplace)
    for a, b in zip(_values_and_grads(lean, x, grad), _values_and_grads(nn.ReLU6(inplace=inplace), x, grad)):
        assert torch.equal(a.nan_to_num(-9.0), b.nan_to_num(-9.0))
    y = x.clone()  # without autograd: torch's module, in place or not as configured
    assert torch.equal(lean(y).nan_to_num(-9.0), nn.ReLU6()(x).nan_to_num(-9.0)) and (lean(y).data_ptr() == y.data_ptr()) == inplace


def test_it_keeps_only_its_output():
    saved = []
    x = torch.randn(1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = LeanReLU6(inplace=True)(x * 1.0)
    assert len(saved) == 1 and saved[0].data_ptr() == out.data_ptr()


def test_second_derivatives_are_torchs():
    """create_graph=True through the backward: the gradient of a gradient, as with torch's ReLU6."""
    torch.manual_seed(0)
    x, grad = 5 * torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64, requires_grad=True)
    results = []
    for module in (LeanReLU6(), nn.ReLU6()):
        _, gx = _values_and_grads(module, x, grad, create_graph=True)
        results.append(torch.autograd.grad((gx**2).sum(), grad)[0])
    assert torch.equal(*results)


def _saved_bytes(op, x):
    counts = {}
    with counting_saved_bytes(counts, exclude=(x,)):
        op(x)
    return sum(counts.values())


@pytest.mark.parametrize("name", ["sg_block", "inv_res"])
def test_the_blocks_compute_the_same_and_keep_two_activations_less(name):
    """Each block has two ReLU6; torch's in-place one keeps a copy of its input, the lean one nothing extra."""
    torch.manual_seed(0)
    # the blocks' plain bodies: the lean ones (--lean-blocks) apply their ReLU6 inside their runs (tests/test_norm_act_conv.py)
    cpu, policy = torch.device("cpu"), dataclasses.replace(device_policy("cpu"), lean_blocks=False)
    lean = accelerate(build_op(name, 16, 1, affine=False, options=OpOptions()), cpu, policy)
    plain = accelerate(copy.deepcopy(lean), cpu, policy)
    for module in plain.modules():
        if type(module) is LeanReLU6:
            module.__class__ = nn.ReLU6
    assert sum(type(m) is LeanReLU6 for m in lean.modules()) == 2
    x = (3 * torch.randn(4, 16, 8, 8)).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    results = []
    for block in (lean, plain):
        out = block(x)
        grads = torch.autograd.grad(out, [x, *block.parameters()], torch.randn_like(out, generator=torch.Generator().manual_seed(1)))
        results.append((out, *grads))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    hidden = 16 * (OpOptions().ir_expansion if name == "inv_res" else 1)
    activation = 4 * hidden * 8 * 8 * 4  # bytes of one ReLU6 input at the block's ReLU6 width
    assert _saved_bytes(plain, x) - _saved_bytes(lean, x) == 2 * activation
