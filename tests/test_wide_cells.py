"""Wide cells (darts_sg.speed.wide_cells): a derived cell's convolutions of one shape run as one wide op, and nothing
changes but speed: values, gradients, running statistics, drop-path masks, state-dict keys."""

import copy
import dataclasses
import io
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import darts_sg
from darts_sg.model.genotype import Genotype
from darts_sg.speed.accelerate import accelerate, device_policy
from darts_sg.speed.wide_cells import SharedInputReLU, WideDerivedCell
from torch.utils._python_dispatch import TorchDispatchMode

CPU = torch.device("cpu")

# every kind of edge the wide cell plans: a two-source group of separable convs in a later wave, a one-source group
# of dilated ones, single convs, max pools repeated on one state (run once), the stride-2 factorized reduce
VARIED = Genotype(
    normal=(("dil_conv_3x3", 0), ("dil_conv_3x3", 0), ("sep_conv_5x5", 1), ("avg_pool_3x3", 1),
            ("sep_conv_3x3", 2), ("sep_conv_3x3", 3), ("max_pool_3x3", 3), ("skip_connect", 4)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 1),
            ("dil_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 2), ("skip_connect", 3)),
    reduce_concat=(2, 3, 4, 5),
)  # fmt: skip
# edge 2 reads node 0 (second wave) but comes before edge 3, which reads s0 (first wave): the masks must still be
# drawn in the plain cell's order, edge by edge
OUT_OF_ORDER = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 1), ("dil_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_3x3", 4)),
    normal_concat=(2, 3, 4, 5),
    reduce=VARIED.reduce,
    reduce_concat=(2, 3, 4, 5),
)  # fmt: skip


def _network(genotype="darts_v2", auxiliary=True):
    """A tiny derived network: 4 cells (normal, two reductions, the auxiliary head after the second, normal), C=8, doubles."""
    torch.manual_seed(0)
    return darts_sg.build_network(genotype, C=8, layers=4, num_classes=10, auxiliary=auxiliary).double()


def _widened(model, policy="cuda"):
    """`model` (a copy) accelerated on the CPU with the switches of `policy` and wide cells on."""
    return accelerate(copy.deepcopy(model), CPU, dataclasses.replace(device_policy(policy), wide_cells=True, cudnn_benchmark=False))


def _wide_cells(model):
    return [m for m in model.modules() if isinstance(m, WideDerivedCell) and m._waves is not None]


def _batch(n=4, channels_last=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.double)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x, torch.randint(0, 10, (n,), generator=g)


def _train(model, batch, drop_path=0.0, steps=2, seed=5):
    """Forward and backward `steps` times in training mode from the random state `seed` (drop-path masks); the last loss."""
    model.train()
    model.drop_path_prob = drop_path
    torch.manual_seed(seed)
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        logits, logits_aux = model.forward_with_aux(batch[0])
        loss = F.cross_entropy(logits, batch[1])
        if logits_aux is not None:
            loss = loss + 0.4 * F.cross_entropy(logits_aux, batch[1])
        loss.backward()
    return loss


def _assert_same_state(a, b):
    """Same keys; same values, except the batch counters, which the wide batch norms do not increment."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(sa[key], sb[key], msg=key)


def _assert_same_grads(a, b):
    grads = dict(b.named_parameters())
    for name, p in a.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, msg=name)


@pytest.mark.parametrize("genotype", ["darts_v2", VARIED, OUT_OF_ORDER])
@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_wide_network_matches_the_plain_one(genotype, drop_path):
    """Loss, gradients, running statistics and eval outputs, with drop path off and on (the same masks)."""
    plain = _network(genotype)
    wide = _widened(plain)
    assert len(_wide_cells(wide)) == 4
    assert [n for n, _ in wide.named_parameters()] == [n for n, _ in plain.named_parameters()]
    batch = _batch()
    wide_loss, wide_next = _train(wide, batch, drop_path), torch.rand(3)
    plain_loss, plain_next = _train(plain, batch, drop_path), torch.rand(3)
    torch.testing.assert_close(wide_loss, plain_loss)
    assert torch.equal(wide_next, plain_next)  # the same random numbers drawn, no more
    _assert_same_grads(wide, plain)
    _assert_same_state(wide, plain)
    plain.eval(), wide.eval()
    torch.testing.assert_close(wide(batch[0]), plain(batch[0]))


def test_drop_path_is_on_in_the_comparison():
    """The masks of the test above drop samples: a loss with drop path differs from the one without, and by seed."""
    wide = _widened(_network())
    batch = _batch(8)
    losses = [_train(copy.deepcopy(wide), batch, p, steps=1, seed=s).item() for p, s in ((0.0, 5), (0.3, 5), (0.3, 6))]
    assert len(set(losses)) == 3


def test_the_cpu_policy_switches_agree_too():
    """Channels-last tensors, wide-view batch norms and polyphase dilated convs (a dilated conv then runs alone)."""
    plain = _network(VARIED)
    wide = _widened(plain, "cpu")
    batch = _batch(channels_last=True)
    torch.testing.assert_close(_train(wide, batch, 0.3), _train(plain, batch, 0.3))
    _assert_same_grads(wide, plain)
    _assert_same_state(wide, plain)


def test_plain_checkpoints_load_into_wide_models_and_back():
    plain, other = _network(), _network()
    _train(other, _batch(), steps=1)  # different weights and statistics than `plain`
    wide = _widened(plain)
    _train(wide, _batch(), steps=1)  # the running statistics are views of wide buffers now
    buffer = io.BytesIO()
    torch.save(other.state_dict(), buffer)
    buffer.seek(0)
    wide.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_same_state(wide, other)
    batch = _batch(6)
    torch.testing.assert_close(_train(wide, batch, 0.2, steps=1), _train(other, batch, 0.2, steps=1))
    _assert_same_state(wide, other)  # the loaded statistics moved in place
    buffer = io.BytesIO()
    torch.save(wide.state_dict(), buffer)
    buffer.seek(0)
    back = _network()
    back.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_same_state(back, wide)


def test_moving_a_wide_model_rehomes_its_statistics():
    plain = _network(auxiliary=False).float()
    wide = _widened(plain).double()  # .double() replaces every buffer: the views are gone
    plain = plain.double()
    batch = _batch()
    _train(wide, batch, 0.2), _train(plain, batch, 0.2)
    _assert_same_state(wide, plain)


def test_the_cuda_policy_widens_derived_cells_the_cpu_policy_does_not():
    assert device_policy("cuda").wide_cells and not device_policy("cpu").wide_cells
    network = accelerate(_network(), CPU, dataclasses.replace(device_policy("cuda"), cudnn_benchmark=False))
    assert len(_wide_cells(network)) == 4
    assert not _wide_cells(accelerate(_network(), CPU, device_policy("cpu")))
    supernet = accelerate(darts_sg.build_supernet("darts", C=8, layers=3), CPU, dataclasses.replace(device_policy("cuda"), cudnn_benchmark=False))
    assert not any(isinstance(m, WideDerivedCell) for m in supernet.modules())  # mixed-op cells: wide edges' business


def test_recomputed_wide_cells_agree_and_recompute_their_relus():
    plain = _network(auxiliary=False)
    acceleration = dataclasses.replace(device_policy("cuda"), wide_cells=True, recompute_cells=True, cudnn_benchmark=False)
    wide = accelerate(copy.deepcopy(plain), CPU, acceleration)
    assert len(_wide_cells(wide)) == 4 and not any(isinstance(m, SharedInputReLU) for m in wide.modules())
    batch = _batch()
    torch.testing.assert_close(_train(wide, batch, 0.3), _train(plain, batch, 0.3))
    _assert_same_grads(wide, plain)
    _assert_same_state(wide, plain)


def test_differing_drop_path_probabilities_run_plain_and_agree():
    plain = _network(auxiliary=False)
    wide = _widened(plain)
    batch = _batch()
    losses = []
    for model in (wide, plain):
        model.train()
        model.drop_path_prob = 0.2
        model.cells[0].drop_paths[1].p = 0.5
        torch.manual_seed(5)
        losses.append(F.cross_entropy(model(batch[0]), batch[1]))
    torch.testing.assert_close(*losses)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_each_state_is_relued_once():
    """DARTS_V2, normal - reduction - reduction - normal, in training: the plain network takes 31 ReLUs (13 per normal
    cell: two preprocessings, ten halves of separable convs, a dilated conv; 2 per reduction cell; the auxiliary
    head's); the wide one 10: per normal cell one for s0 and s1 stacked, one for the wide op's second halves, one for
    node 0; one per cell output (the first cell reads the stem twice, the auxiliary head and the next cells share)."""
    plain = _network()
    wide = _widened(plain)
    counts = []
    for model in (plain, wide):
        with _Ops() as ops:
            model.forward_with_aux(_batch()[0])
        counts.append(ops.counts["relu"])
    assert counts == [31, 10]


def test_a_cell_runs_twice_from_the_same_leaf_inputs():
    """A leaf's ReLU is not kept: the second pass builds its own graph (the first pass's backward freed its own)."""
    cell = _wide_cells(_widened(_network(auxiliary=False)))[0]
    assert isinstance(cell.preprocess0[0], SharedInputReLU)
    s0 = torch.randn(2, cell.preprocess0[1].in_channels, 8, 8, dtype=torch.double, requires_grad=True)
    for _ in range(2):
        cell(s0, s0).sum().backward()


def test_inference_mode_agrees():
    """Inference tensors have no version counter: their ReLUs are not kept."""
    plain = _network()
    wide = _widened(plain)
    plain.eval(), wide.eval()
    with torch.inference_mode():
        torch.testing.assert_close(wide(_batch()[0]), plain(_batch()[0]))
