"""The wide-view batch norm equals torch's BatchNorm2d: outputs, gradients, running statistics."""

import copy

import pytest
import torch
from torch import nn

from darts_sg.speed.batchnorm import UncountedBatchNorm2d, WideBatchNorm2d, wide_factor

CL = torch.channels_last


def _pair(C, affine=True, momentum=0.1, track=True):
    torch.manual_seed(0)
    ours = WideBatchNorm2d(C, affine=affine, momentum=momentum, track_running_stats=track).double()
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
    reference = nn.BatchNorm2d(C, affine=affine, momentum=momentum, track_running_stats=track).double()
    reference.load_state_dict(ours.state_dict())
    return ours, reference


@pytest.mark.parametrize("C", [36, 8, 16, 24, 72])
@pytest.mark.parametrize("affine", [True, False])
def test_training_matches_torch(C, affine):
    ours, reference = _pair(C, affine)
    x = (torch.randn(4, C, 6, 6, dtype=torch.float64) * 3 + 2).contiguous(memory_format=CL)
    assert wide_factor(x) > 1  # the wide path really runs
    grad = torch.randn(4, C, 6, 6, dtype=torch.float64).contiguous(memory_format=CL)
    results = []
    for module in (ours, reference):
        xi = x.clone().requires_grad_(True)
        for _ in range(2):  # two steps: running statistics and the counter move twice
            out = module(xi)
        out.backward(grad)
        params = [p.grad for p in module.parameters()]
        results.append((out, xi.grad, params, [b.clone() for b in module.buffers()]))
    (o1, g1, p1, b1), (o2, g2, p2, b2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)
    for a, b in zip(p1 + b1, p2 + b2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert o1.is_contiguous(memory_format=CL) and g1.is_contiguous(memory_format=CL)


def test_eval_and_cumulative_momentum_match_torch():
    ours, reference = _pair(36, momentum=None)
    x = torch.randn(2, 36, 4, 4, dtype=torch.float64).contiguous(memory_format=CL)
    for _ in range(3):
        ours(x * 2)
        reference(x * 2)
    torch.testing.assert_close(ours.running_var, reference.running_var, rtol=1e-12, atol=0)
    ours.eval()
    reference.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-10, atol=1e-12)


def test_grad_from_a_non_channels_last_gradient():
    ours, reference = _pair(36)
    x = torch.randn(2, 36, 4, 4, dtype=torch.float64).contiguous(memory_format=CL)
    grad = torch.randn(2, 36, 4, 4, dtype=torch.float64)  # NCHW
    grads = []
    for module in (ours, reference):
        xi = x.clone().requires_grad_(True)
        module(xi).backward(grad)
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-10)


def test_native_path_where_the_wide_one_does_not_apply():
    assert wide_factor(torch.randn(2, 36, 4, 4)) == 1  # NCHW
    assert wide_factor(torch.randn(2, 32, 4, 4).contiguous(memory_format=CL)) == 1  # C multiple of 16
    assert wide_factor(torch.randn(1, 36, 1, 3).contiguous(memory_format=CL)) == 1  # 3 pixels, k = 4
    assert wide_factor(torch.randn(2, 36, 4, 4).contiguous(memory_format=CL)) == 4
    assert wide_factor(torch.randn(2, 16, 4, 4).contiguous(memory_format=CL)) == 4  # 16 channels or fewer: 64 wide
    assert wide_factor(torch.randn(2, 8, 4, 4).contiguous(memory_format=CL)) == 8
    assert wide_factor(torch.randn(1, 8, 2, 3).contiguous(memory_format=CL)) == 2  # 6 pixels: 16 wide


def test_wide_path_runs_in_the_substitute_only(monkeypatch):
    ours, reference = _pair(36)
    calls = []
    monkeypatch.setattr("darts_sg.speed.batchnorm._WideBatchNorm.apply", lambda *a: calls.append(a))
    reference(torch.randn(2, 36, 4, 4, dtype=torch.float64).contiguous(memory_format=CL))
    assert calls == []
    with pytest.raises(TypeError):  # the patched apply returns None: proves the wide path was taken
        ours(torch.randn(2, 36, 4, 4, dtype=torch.float64).contiguous(memory_format=CL))


def test_state_dict_interchangeable_with_torch():
    ours, _ = _pair(36)
    plain = nn.BatchNorm2d(36)
    plain.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert set(plain.state_dict()) == set(ours.state_dict())


def test_second_derivatives_match_torch():
    ours, reference = _pair(36)
    x = torch.randn(2, 36, 4, 4, dtype=torch.float64).contiguous(memory_format=CL)
    results = []
    for module in (ours, reference):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((module(xi) ** 3).sum(), xi, create_graph=True)
        results.append(torch.autograd.grad((g * g).sum(), [xi, module.weight]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("enabled", [True, False])
def test_run_setting_reaches_every_batch_norm(enabled):
    import darts_sg
    from darts_sg.speed.accelerate import accelerate, resolve_acceleration
    from darts_sg.train.config import RunConfig

    cpu = torch.device("cpu")
    model = darts_sg.build_supernet("darts", C=4, layers=3, num_classes=10, steps=2)
    model = accelerate(model, cpu, resolve_acceleration(RunConfig(fast_batchnorm=enabled), cpu))
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert kinds == {WideBatchNorm2d if enabled else nn.BatchNorm2d}


def test_uncounted_batch_norm_is_torchs_without_the_counter():
    """Outputs, gradients and running statistics bit for bit; the counter stays where it was; old state dicts load."""
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(6).double()
    reference(torch.randn(4, 6, 5, 5, dtype=torch.float64))  # a state dict that has counted one batch
    ours = UncountedBatchNorm2d(6).double()
    ours.load_state_dict(reference.state_dict())
    for _ in range(3):
        x = torch.randn(4, 6, 5, 5, dtype=torch.float64, requires_grad=True)
        grad_out = torch.randn(4, 6, 5, 5, dtype=torch.float64)
        outs = []
        for bn in (reference, ours):
            out = bn(x)
            outs.append((out, *torch.autograd.grad(out, (x, bn.weight, bn.bias), grad_out)))
        for a, b in zip(*outs):
            assert torch.equal(a, b)
    for key, value in reference.state_dict().items():
        if key != "num_batches_tracked":
            assert torch.equal(ours.state_dict()[key], value), key
    assert reference.num_batches_tracked == 4 and ours.num_batches_tracked == 1
    ours.eval(), reference.eval()
    assert torch.equal(ours(x), reference(x))


def test_uncounted_batch_norm_without_momentum_counts_as_torch_does():
    ours, reference = UncountedBatchNorm2d(3, momentum=None).double(), nn.BatchNorm2d(3, momentum=None).double()
    for _ in range(2):
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
        assert torch.equal(ours(x), reference(x))
    assert ours.num_batches_tracked == 2
    assert torch.equal(ours.running_var, reference.running_var)
