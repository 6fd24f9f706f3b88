"""Fused optimizers (darts_sg.speed.fused_optim): which devices get them, and that they step as the for-loop ones do."""

import pytest
import torch

from darts_sg.speed.fused_optim import optimizer_kwargs


def test_fused_on_cuda_only_default_on_the_cpu_capturable_under_graphs():
    for kind in ("sgd", "adam"):
        assert optimizer_kwargs(kind, "cuda") == {"fused": True}
        assert optimizer_kwargs(kind, torch.device("cpu")) == optimizer_kwargs(kind, "cpu", graphs=True) == {}
    assert optimizer_kwargs("sgd", "cuda", graphs=True) == {"fused": True}
    assert optimizer_kwargs("adam", "cuda", graphs=True) == {"capturable": True, "foreach": True}
    with pytest.raises(ValueError, match="sgd, adam"):
        optimizer_kwargs("rmsprop", "cuda")


def _steps(make, fused, device, steps=5):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.double).to(device)) for shape in ((4, 3, 3), (7,), (2, 5))]
    optimizer = make(params, fused=fused)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.double).to(device)
        optimizer.step()
    return params, optimizer


OPTIMIZERS = {
    "sgd": lambda params, fused: torch.optim.SGD(params, 0.025, momentum=0.9, weight_decay=3e-4, foreach=False, fused=fused),
    "adam": lambda params, fused: torch.optim.Adam(params, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3, foreach=False, fused=fused),
}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_steps_match_the_for_loop(name, device):
    loop, loop_opt = _steps(OPTIMIZERS[name], False, device)
    fused, fused_opt = _steps(OPTIMIZERS[name], True, device)
    for a, b in zip(loop, fused):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    for a, b in zip(loop, fused):  # the state too (momentum buffers, Adam's moments), so a resume is the same
        for key, value in loop_opt.state[a].items():
            torch.testing.assert_close(fused_opt.state[b][key].to(value.dtype), value, msg=key)
