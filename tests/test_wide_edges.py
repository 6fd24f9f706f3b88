"""Wide edges (darts_sg.speed.wide_edges): the edges that read one node run as one wide op, and nothing changes but speed."""

import contextlib
import copy
import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

import darts_sg
from darts_sg.speed.accelerate import accelerate, device_policy
from darts_sg.model.ops import OpOptions
from darts_sg.train.architect import unrolled_alpha_grads
from darts_sg.speed.wide_edges import WideCell, stacked_once

CPU = torch.device("cpu")


def _supernet(space="darts", partial_channels=1, steps=2, options=None):
    """A tiny supernet: 3 cells (a reduction cell with stride-2 edges among them), 2 nodes (the 4 edges of the cell's
    inputs in one group, then node 0's edge)."""
    torch.manual_seed(0)
    return darts_sg.build_supernet(
        space, C=8, layers=3, num_classes=10, partial_channels=partial_channels, steps=steps, options=options
    ).double()


def _widened(model, policy="cuda"):
    """`model` (a copy) accelerated on the CPU with the switches of `policy` and wide edges on."""
    return accelerate(copy.deepcopy(model), CPU, dataclasses.replace(device_policy(policy), wide_edges=True, cudnn_benchmark=False))


def _wide_cells(model):
    return [m for m in model.modules() if isinstance(m, WideCell) and m._wide_groups is not None]


def _batch(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.double), torch.randint(0, 10, (n,), generator=g)


def _train(model, batch, steps=2):
    """Forward and backward `steps` times in training mode (running statistics move); the last loss."""
    model.train()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
    return loss


def _assert_same_state(a, b):
    """Same keys; same values, except the batch counters, which the wide batch norms do not increment."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(sa[key], sb[key], msg=key)


@pytest.mark.parametrize("space, policy", [("darts", "cuda"), ("sgblock", "cuda"), ("darts", "cpu")])
def test_wide_supernet_matches_the_plain_one(space, policy):
    """Under the CUDA policy's switches, and under the CPU's (channels-last, polyphase dilated convs, wide-view batch norm)."""
    plain = _supernet(space, steps=4 if policy == "cuda" and space == "darts" else 2)  # 4 nodes: groups of 4, 4, 3, 2, 1 edges
    wide = _widened(plain, policy)
    assert len(_wide_cells(wide)) == 3  # normal and reduction cells (stride-2 edges) alike
    assert [n for n, _ in wide.named_parameters()] == [n for n, _ in plain.named_parameters()]
    batch = _batch()
    if policy == "cpu":
        batch = (batch[0].contiguous(memory_format=torch.channels_last), batch[1])
    _assert_trains_alike(wide, plain, batch)


def _assert_trains_alike(wide, plain, batch):
    """Same losses, weight and alpha gradients and running statistics after two training passes; same eval outputs."""
    torch.testing.assert_close(_train(wide, batch), _train(plain, batch))
    plain_params = dict(plain.named_parameters())
    for name, p in wide.named_parameters():  # weights and alphas
        torch.testing.assert_close(p.grad, plain_params[name].grad, msg=name)
    _assert_same_state(wide, plain)  # the running statistics moved alike
    plain.eval(), wide.eval()
    torch.testing.assert_close(wide(batch[0]), plain(batch[0]))


@pytest.mark.parametrize(
    "space, options",
    [
        ("sgblock", OpOptions(sg_ratio=4, sg_min_hidden=2, sg_identity=0.5)),  # a 2-channel bottleneck, half a shortcut
        ("invres", OpOptions(ir_expansion=2)),  # its first 1x1 conv, on the sources, grouped by source
        ("skip_connect,sg_block,inv_res,max_pool_3x3", OpOptions()),  # two wide blocks, no separable convs
    ],
)
def test_wide_blocks_match_the_plain_ones(space, options):
    """The sandglass and inverted-residual blocks of a group run as one block over all its edges, in every cell."""
    plain = _supernet(space, steps=3, options=options)  # groups of 4 (the two inputs, 2 edges each), 2 and 1 edges
    wide = _widened(plain)
    groups = [group for cell in _wide_cells(wide) for group in cell._wide_groups]
    assert len(groups) == 9 and [g.srcs for g in groups[:3]] == [[0, 1], [2], [3]]
    assert all(len(g.wide_blocks) == len(g.other) > 0 for g in groups if g.E > 1)
    _assert_trains_alike(wide, plain, _batch())


def test_partial_channel_cells_stay_plain_and_agree():
    plain = _supernet("darts", partial_channels=2)
    wide = _widened(plain)
    assert not _wide_cells(wide)
    batch = _batch()
    torch.testing.assert_close(_train(wide, batch), _train(plain, batch))
    _assert_same_state(wide, plain)


@pytest.mark.parametrize("space", ["darts", "sgblock"])
def test_plain_checkpoints_load_into_wide_models_and_back(space):
    plain, other = _supernet(space), _supernet(space)
    _train(other, _batch(), steps=1)  # different weights and statistics than `plain`
    wide = _widened(plain)
    _train(wide, _batch(), steps=1)  # the buffers are views of wide ones now
    buffer = io.BytesIO()
    torch.save(other.state_dict(), buffer)
    buffer.seek(0)
    wide.load_state_dict(torch.load(buffer, weights_only=True))  # copied into the views
    _assert_same_state(wide, other)
    batch = _batch(6)
    torch.testing.assert_close(_train(wide, batch, steps=1), _train(other, batch, steps=1))
    _assert_same_state(wide, other)  # the loaded statistics moved in place
    buffer = io.BytesIO()
    torch.save(wide.state_dict(), buffer)
    buffer.seek(0)
    back = _supernet(space)
    back.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_same_state(back, wide)


def test_moving_a_wide_model_rehomes_its_statistics():
    plain = _supernet().float()
    wide = _widened(plain).double()  # .double() replaces every buffer: the views are gone
    plain = plain.double()
    batch = _batch()
    _train(wide, batch), _train(plain, batch)
    _assert_same_state(wide, plain)
    bn = _wide_cells(wide)[0]._wide_groups[0].stage1.stats.bns[0]
    assert bn.running_mean._base is not None  # a view of the wide buffer again


@pytest.mark.parametrize("space", ["darts", "sgblock"])
def test_second_order_alpha_gradients_agree(space):
    plain = _supernet(space)
    wide = _widened(plain)
    grads = []
    for model in (plain, wide):
        optimizer = torch.optim.SGD(model.weights(), 0.1, momentum=0.9, weight_decay=3e-4)
        grads.append(unrolled_alpha_grads(model, optimizer, _batch(), _batch(6), xi=0.1)[0])
    for g_plain, g_wide in zip(*grads):
        torch.testing.assert_close(g_wide, g_plain)


def test_the_cuda_policy_widens_the_cpu_policy_does_not():
    assert device_policy("cuda").wide_edges and not device_policy("cpu").wide_edges
    model = accelerate(_supernet(), CPU, dataclasses.replace(device_policy("cuda"), cudnn_benchmark=False))
    assert len(_wide_cells(model)) == 3
    network = accelerate(darts_sg.build_network("darts_v2", C=8, layers=3), CPU, device_policy("cuda"))
    assert not _wide_cells(network)  # a derived network's cells have no mixed ops: plain


def test_stacked_once_reuses_the_stacks_while_the_weights_stay_the_same():
    """One step's passes share each stage's weight stacks; the gradients are those of stacking at every pass;
    an in-place update makes a new stack, and nothing is kept after the block."""
    wide = _widened(_supernet())
    stage = _wide_cells(wide)[0]._wide_groups[0].stage1
    x, y = _batch()
    F.cross_entropy(wide(x), y).backward()
    expected = {name: p.grad.clone() for name, p in wide.named_parameters()}
    wide.zero_grad(set_to_none=True)
    with stacked_once(wide):
        F.cross_entropy(wide(x), y).backward()  # a pass whose stacks are kept, as the alpha pass's
        wide.zero_grad(set_to_none=True)
        kept = stage.kept[3]
        F.cross_entropy(wide(x), y).backward()
        assert stage.kept[3] is kept
        for name, p in wide.named_parameters():
            assert torch.equal(p.grad, expected[name]), name
        with torch.no_grad():
            stage.units[0][0][1].weight.add_(1.0)
        wide(x)
        assert stage.kept[3] is not kept
    assert stage.kept is None and not stage.reuse


@pytest.mark.parametrize("order, space", [(1, "darts"), (2, "darts"), (1, "sgblock")])
def test_a_search_step_with_shared_stacks_is_the_step_without(order, space):
    from darts_sg.jobs.search import SearchConfig, SearchStep

    steps = []
    for reuse in (True, False):
        wide = _widened(_supernet(space))
        step = SearchStep(wide, SearchConfig(order=order), CPU, device_policy("cuda"), optimizer_device="cuda")
        if not reuse:
            step.same_weights = contextlib.nullcontext
        step(_batch(), _batch(6))
        steps.append(wide.state_dict())
    for key, value in steps[0].items():
        assert torch.equal(value, steps[1][key]), key


def test_stacked_weights_are_the_padded_concatenation_with_its_gradient():
    from darts_sg.speed.wide_edges import _StackedWeights

    layout = [(5, [(5, 2), (3, 3), (5, 1)]), (5, [(3, 1), (5, 1)]), (1, [(1, 4)])]
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 1, 5, 5)] * 2 + [(2, 1, 3, 3)] * 3 + [(2, 1, 5, 5)] + [(2, 1, 3, 3), (2, 1, 5, 5)] + [(2, 3, 1, 1)] * 4
    weights = [torch.randn(*shape, generator=g, dtype=torch.double, requires_grad=True) for shape in shapes]

    def reference(*w):
        pad = lambda t: F.pad(t, [1] * 4) if t.shape[-1] == 3 else t  # noqa: E731
        return torch.cat([pad(t) for t in w[:6]]), torch.cat([pad(t) for t in w[6:8]]), torch.cat(w[8:])

    for stack, expected in zip(_StackedWeights.apply(layout, *weights), reference(*weights)):
        assert torch.equal(stack, expected)
    torch.autograd.gradcheck(lambda *w: _StackedWeights.apply(layout, *w), weights)
