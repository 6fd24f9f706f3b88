import torch
import torch.nn.functional as F
from torch.func import functional_call

import darts_sg
from darts_sg.train.architect import Architect, frozen, unrolled_alpha_grads
from darts_sg.train.engine import set_grads, weight_step


def _tiny(space="sgblock"):
    torch.manual_seed(0)
    model = darts_sg.build_supernet(space, C=4, layers=3, num_classes=10, steps=2).double()
    opt = torch.optim.SGD(model.weights(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    batch = lambda: (torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,)))  # noqa: E731
    return model, opt, batch(), batch()


def second_order_against_autograd(monkeypatch, device: str = "cpu"):
    """Second-order alpha gradients by finite difference, the exact ones by autograd, and first-order ones,
    on a tiny float64 supernet on `device`."""
    # A finite difference is only exact for a smooth loss: make the activations smooth and leave
    # out max pooling, so that no kink lies within the finite-difference radius.
    monkeypatch.setattr(torch.nn.ReLU, "forward", lambda self, x: F.softplus(x))
    monkeypatch.setattr(torch.nn.ReLU6, "forward", lambda self, x: F.softplus(x))
    model, opt, train, val = _tiny("none,avg_pool_3x3,skip_connect,sep_conv_3x3,dil_conv_3x3,sg_block,inv_res")
    model = model.to(device)
    opt = torch.optim.SGD(model.weights(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    train, val = (tuple(t.to(device) for t in batch) for batch in (train, val))
    F.cross_entropy(model(train[0]), train[1]).backward()  # one real step: momentum buffers exist
    opt.step()
    opt.zero_grad()
    xi = 0.1
    # small finite-difference radius: in float64 the approximation must agree with the exact value
    approx, _ = unrolled_alpha_grads(model, opt, train, val, xi, fd_radius=1e-5)

    names, weights = zip(*model.named_weights())
    grads = torch.autograd.grad(F.cross_entropy(model(train[0]), train[1]), weights, create_graph=True)
    unrolled = {
        n: w - xi * (0.9 * opt.state[w]["momentum_buffer"] + g + 3e-4 * w) for n, w, g in zip(names, weights, grads)
    }
    unrolled.update(zip(model.alpha_names(), model.alphas()))
    val_loss = F.cross_entropy(functional_call(model, unrolled, (val[0],)), val[1])
    exact = torch.autograd.grad(val_loss, model.alphas())
    first = torch.autograd.grad(F.cross_entropy(model(val[0]), val[1]), model.alphas())
    return approx, exact, first


def test_second_order_gradient_matches_exact_autograd(monkeypatch):
    approx, exact, first = second_order_against_autograd(monkeypatch)
    for a, e in zip(approx, exact):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-9)
    # and the implicit term matters: first order differs from the exact gradient
    assert max((f - e).abs().max() for f, e in zip(first, exact)) > 1e-4


def test_architect_steps_move_only_their_parameters():
    for order in (1, 2):
        model, opt, train, val = _tiny()
        arch = Architect(model, lr=0.01, order=order)
        alphas = [a.clone() for a in model.alphas()]
        weights = [w.clone() for w in model.weights()]
        arch.step(train, val, opt, xi=0.1)
        assert all(not torch.equal(a, b) for a, b in zip(alphas, model.alphas()))
        assert all(torch.equal(w, b) for w, b in zip(weights, model.weights()))
        alphas = [a.clone() for a in model.alphas()]
        with frozen(model.alphas()):
            weight_step(model, opt, train, 5.0)
        assert all(torch.equal(a, b) for a, b in zip(alphas, model.alphas()))
        assert any(not torch.equal(w, b) for w, b in zip(weights, model.weights()))


def test_finite_difference_runs_in_fp32_under_autocast(monkeypatch):
    """The Hessian term moves each weight by ~1e-5 relative: under bf16 autocast it must still be the fp32 one."""
    import contextlib

    import darts_sg.train.architect as architect

    torch.manual_seed(0)
    model = darts_sg.build_supernet("sgblock", C=4, layers=3, num_classes=10, steps=2)
    batch = (torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))
    direction = [torch.randn_like(w) for w in model.weights()]
    reference = architect.finite_difference_hvp(model, direction, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guarded = architect.finite_difference_hvp(model, direction, batch)
    for g, r in zip(guarded, reference):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-9)

    def relative_error(hvp):
        return max(((h - r).norm() / r.norm()).item() for h, r in zip(hvp, reference))

    # without the guard, bf16 autocast ruins the term (this is what the guard is for)
    monkeypatch.setattr(architect, "exact_fp32", lambda device_type: contextlib.nullcontext())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unguarded = architect.finite_difference_hvp(model, direction, batch)
    assert relative_error(unguarded) > 0.05


def test_set_grads_gives_what_backward_gives():
    """The weight step's gradients (torch.autograd.grad, assigned) are backward's bit for bit; unused ones stay None."""
    model, _, train, _ = _tiny()
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    frozen_weight = torch.nn.Parameter(torch.ones(3, dtype=torch.float64), requires_grad=False)
    params = [*model.weights(), unused, frozen_weight]
    with frozen(model.alphas()):
        F.cross_entropy(model(train[0]), train[1]).backward()
        expected = [p.grad for p in params]
        model.zero_grad(set_to_none=True)
        set_grads(F.cross_entropy(model(train[0]), train[1]), params)
    assert all(a.grad is None for a in model.alphas())
    assert unused.grad is None and frozen_weight.grad is None
    for p, g in zip(params, expected):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
