"""LeanSequential: the blocks' batch norm - ReLU6 - conv runs keep only the norm's input, with the same results."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from darts_sg.speed.accelerate import accelerate, device_policy
from darts_sg.train.memory import counting_saved_bytes
from darts_sg.speed.norm_act_conv import LeanSequential, _runs
from darts_sg.model.ops import OpOptions, build_op, sandglass_hidden_width

CPU = torch.device("cpu")
CL = torch.channels_last


def _block_pair(name, stride, affine, dtype=torch.float64):
    """The block accelerated as on the CPU (lean), and the same with --plain-blocks."""
    torch.manual_seed(0)
    plain = build_op(name, 16, stride, affine=affine, options=OpOptions()).to(dtype)
    if affine:
        with torch.no_grad():
            for m in plain.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    policy = device_policy("cpu")
    lean = accelerate(copy.deepcopy(plain), CPU, policy)
    plain = accelerate(plain, CPU, dataclasses.replace(policy, lean_blocks=False))
    assert type(lean.body) is LeanSequential and type(plain.body) is nn.Sequential
    return lean, plain


def _outputs_and_grads(block, x):
    out = block(x)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=CL)
    grads = torch.autograd.grad(out, [x, *block.parameters()], grad)
    return [out, *grads, *(b.clone() for b in block.buffers())]


@pytest.mark.parametrize("name", ["sg_block", "inv_res"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
def test_training_step_matches_the_plain_block(name, stride, affine):
    """Output, input and weight gradients, and the running statistics after two steps."""
    lean, plain = _block_pair(name, stride, affine)
    x = (3 * torch.randn(4, 16, 8, 8, dtype=torch.float64) + 1).contiguous(memory_format=CL).requires_grad_(True)
    results = []
    for block in (lean, plain):
        block(x)  # a first step moves the running statistics
        results.append(_outputs_and_grads(block, x))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    assert all(r[0].is_contiguous(memory_format=CL) and r[1].is_contiguous(memory_format=CL) for r in results)


@pytest.mark.parametrize("name", ["sg_block", "inv_res"])
def test_it_keeps_the_normalised_activations_no_more(name):
    """Kept for backward: no ReLU6 output (two per block) and, in the sandglass block, no normalised bottleneck."""
    lean, plain = _block_pair(name, 1, affine=False, dtype=torch.float32)
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=CL).requires_grad_(True)
    kept = []
    for block in (lean, plain):
        counts = {}
        with counting_saved_bytes(counts, exclude=(x,)):
            block(x)
        kept.append(sum(counts.values()))
    pixels_bytes = 4 * 8 * 8 * 4  # batch x pixels x bytes per float
    if name == "sg_block":
        expected = (2 * 16 + sandglass_hidden_width(16, OpOptions())) * pixels_bytes
    else:
        expected = 2 * 16 * OpOptions().ir_expansion * pixels_bytes
    # the batch statistics (4 bytes per channel and tensor, under 4 KiB here) are kept by both, in different tensors
    assert abs((kept[1] - kept[0]) - expected) < 4096, (kept, expected)


def test_second_derivatives_match_the_plain_block():
    lean, plain = _block_pair("sg_block", 1, affine=True)
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64).contiguous(memory_format=CL)
    results = []
    for block in (lean, plain):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((block(xi) ** 3).sum(), xi, create_graph=True)
        results.append(torch.autograd.grad((g * g).sum(), [xi, *block.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_eval_mode_and_no_grad_run_the_children_as_they_are(monkeypatch):
    lean, plain = _block_pair("sg_block", 1, affine=True)
    calls = []
    monkeypatch.setattr("darts_sg.speed.norm_act_conv.norm_act_conv", lambda *a: calls.append(a))
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64).contiguous(memory_format=CL)
    with torch.no_grad():
        torch.testing.assert_close(lean(x), plain(x), rtol=1e-12, atol=1e-12)
    lean.eval(), plain.eval()
    torch.testing.assert_close(lean(x.requires_grad_(True)), plain(x), rtol=1e-12, atol=1e-12)
    assert calls == []


def test_the_runs_found_in_each_block():
    sg = build_op("sg_block", 16, 1, affine=False, options=OpOptions()).body
    ir = build_op("inv_res", 16, 1, affine=False, options=OpOptions()).body
    assert _runs(list(sg)) == [(1, 4), (4, 6), (6, 9)]  # BN-ReLU6-pw, BN-pw (the bottleneck), BN-ReLU6-dw
    assert _runs(list(ir)) == [(1, 4), (4, 7)]  # BN-ReLU6-dw, BN-ReLU6-pw
    assert _runs([nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1, bias=False)]) == []  # only ReLU6
    assert _runs([nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=True)]) == []  # only bias-free convs


def test_the_search_is_lean_by_default_and_the_retraining_when_asked():
    """Retraining is not short of memory and the recomputation costs time: its default is --plain-blocks."""
    from darts_sg.speed.accelerate import resolve_acceleration
    from darts_sg.train.config import AugmentConfig
    from darts_sg.train.config import SearchConfig

    assert resolve_acceleration(SearchConfig(), CPU).lean_blocks
    assert not resolve_acceleration(SearchConfig(device="cuda"), torch.device("cuda")).lean_blocks
    assert not resolve_acceleration(AugmentConfig(), CPU).lean_blocks
    assert resolve_acceleration(AugmentConfig(lean_blocks=True), CPU).lean_blocks
