"""Recomputed cells (--recompute-cells) give exactly the results of stored activations."""

import copy

import pytest
import torch
import torch.nn.functional as F

import darts_sg
from darts_sg.train.architect import unrolled_alpha_grads


def _tiny_supernet():
    torch.manual_seed(0)
    return darts_sg.build_supernet("sgblock", C=4, layers=3, num_classes=10).double()


def _batch(seed=1, size=16):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, size, size, dtype=torch.float64, generator=generator)
    return x, torch.randint(0, 10, (4,), generator=generator)


def _recomputing_copy(model):
    twin = copy.deepcopy(model)
    twin.recompute_cells = True
    return twin


def _grads_and_buffers(model, loss_fn):
    model.zero_grad()
    loss = loss_fn(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, {n: b.clone() for n, b in model.named_buffers()}


def assert_same(stored, recomputed, loss_fn):
    loss_a, grads_a, buffers_a = _grads_and_buffers(stored, loss_fn)
    loss_b, grads_b, buffers_b = _grads_and_buffers(recomputed, loss_fn)
    assert loss_a == loss_b
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    # Batch-norm statistics are updated once per forward pass, not again by the recomputation.
    for name in buffers_a:
        assert torch.equal(buffers_a[name], buffers_b[name]), name


def test_supernet_gradients_and_running_stats_are_unchanged():
    model = _tiny_supernet()
    x, y = _batch()
    assert_same(model, _recomputing_copy(model), lambda m: F.cross_entropy(m(x), y))


def test_recomputation_keeps_fewer_tensors_for_backward():
    model = _tiny_supernet()
    x, _ = _batch()

    def saved_bytes(m):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x).sum()
        return total

    assert saved_bytes(_recomputing_copy(model)) < 0.5 * saved_bytes(model)


def test_second_order_alpha_gradients_use_the_virtual_weights():
    # The backward of the unrolled step runs after functional_call has put the real weights
    # back; a recomputation that read the module's weights then would use the wrong ones.
    model = _tiny_supernet()
    twin = _recomputing_copy(model)
    train, val = _batch(1), _batch(2)
    results = []
    for m in (model, twin):
        optimizer = torch.optim.SGD(m.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
        results.append(unrolled_alpha_grads(m, optimizer, train, val, xi=0.025))
    (grads_a, loss_a), (grads_b, loss_b) = results
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert a.abs().sum() > 0 and torch.equal(a, b)


@pytest.mark.parametrize("channels_last", [False, True])
def test_retraining_with_drop_path_and_auxiliary_head_is_unchanged(channels_last):
    # channels-last: with every CPU substitute, the wide-view batch norm among them (C = 4, 8: not multiples of 16)
    from darts_sg.speed.accelerate import accelerate, device_policy
    from darts_sg.speed.batchnorm import WideBatchNorm2d

    torch.manual_seed(0)
    model = darts_sg.build_network("darts_v2", C=4, layers=5, auxiliary=True).double()
    model.drop_path_prob = 0.3
    x, y = _batch(size=32)  # the auxiliary head needs 8x8 maps after the second reduction
    if channels_last:
        model = accelerate(model, torch.device("cpu"), device_policy("cpu"))
        assert any(isinstance(m, WideBatchNorm2d) for m in model.modules())
        x = x.contiguous(memory_format=torch.channels_last)

    def loss_fn(m):
        torch.manual_seed(7)  # the same drop-path masks in both runs
        logits, aux = m.forward_with_aux(x)
        return F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)

    assert_same(model, _recomputing_copy(model), loss_fn)


def test_no_recomputation_without_gradients(monkeypatch):
    import darts_sg.model.network

    calls = []
    original = darts_sg.model.network.recomputed_call
    monkeypatch.setattr(darts_sg.model.network, "recomputed_call", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = _recomputing_copy(_tiny_supernet()).eval()
    x, _ = _batch()
    with torch.no_grad():
        model(x)
    assert calls == []  # evaluation does not pay for checkpointing
    model(x).sum().backward()
    assert len(calls) == len(model.cells)
