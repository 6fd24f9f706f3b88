import pytest
import torch
import torch.nn.functional as F

import darts_sg
from darts_sg.speed.accelerate import Acceleration, accelerate
from darts_sg.model.cells import DropPath, MixedOp
from darts_sg.speed.fused_mixed_op import FusedMixedOp, WeightedSum
from darts_sg.model.network import Supernet, reduction_layers
from darts_sg.model.ops import OpOptions

CPU = torch.device("cpu")


def edge_substitutes(share_relu=True, fused_sum=True) -> Acceleration:
    """Only the mixed-op substitutes, every other switch off."""
    off = {name: False for name in Acceleration.__dataclass_fields__}
    return Acceleration(**{**off, "share_relu": share_relu, "fused_sum": fused_sum})


def test_reference_supernet_parameter_count():
    model = darts_sg.build_supernet("darts", C=16, layers=8, num_classes=10)
    assert darts_sg.count_params(model) == 1_930_618


@pytest.mark.parametrize(
    "name, auxiliary, expected",
    [("DARTS_V2", False, 3_349_342), ("DARTS_V2", True, 3_825_768), ("DARTS_V1", False, 3_169_414)],
)
def test_reference_network_parameter_counts(name, auxiliary, expected):
    model = darts_sg.build_network(name, C=36, layers=20, num_classes=10, auxiliary=auxiliary)
    assert darts_sg.count_params(model) == expected


def test_alphas_are_separate_from_weights():
    model = darts_sg.build_supernet("sgblock", C=4, layers=3)
    weight_ids = {id(p) for p in model.weights()}
    alpha_ids = {id(p) for p in model.alphas()}
    assert not weight_ids & alpha_ids
    assert weight_ids | alpha_ids == {id(p) for p in model.parameters()}
    assert model.alpha_normal.shape == (14, 9)
    assert darts_sg.count_params(model) == sum(p.numel() for p in model.weights())


@pytest.mark.parametrize("space", ["darts", "sgblock", "invres"])
def test_supernet_output_shape(space):
    model = darts_sg.build_supernet(space, C=4, layers=3, num_classes=7)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_reductions_at_one_and_two_thirds():
    assert reduction_layers(8) == (2, 5)
    assert reduction_layers(20) == (6, 13)
    model = darts_sg.build_supernet("darts", C=4, layers=8)
    assert [c.reduction for c in model.cells] == [i in (2, 5) for i in range(8)]


def test_gradients_reach_weights_and_alphas():
    model = darts_sg.build_supernet("sgblock", C=4, layers=3)
    loss = F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for p in model.alphas():
        assert p.grad is not None and p.grad.abs().sum() > 0
    # every op's weights get a gradient (the `none` op has none)
    missing = [n for n, p in model.named_weights() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_network_with_auxiliary_head_returns_aux_logits_in_training_only():
    model = darts_sg.build_network("DARTS_V2", C=8, layers=5, num_classes=10, auxiliary=True)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == aux.shape == (2, 10)
    model.eval()
    assert model.forward_with_aux(x)[1] is None


def test_drop_path_is_not_in_place_and_exempts_skip():
    x = torch.ones(1000, 2, 2, 2)
    drop = DropPath(0.3)
    y = drop(x)
    assert torch.equal(x, torch.ones_like(x))
    kept = (y.flatten(1).sum(1) > 0).float().mean()
    assert 0.6 < kept < 0.8
    torch.testing.assert_close(y[y > 0], torch.full_like(y[y > 0], 1 / 0.7))
    assert torch.equal(drop.eval()(x), x)  # evaluation keeps every sample
    model = darts_sg.build_network("DARTS_V2", C=8, layers=3)
    model.drop_path_prob = 0.25
    for cell in model.cells:
        for edge, drop in zip(cell.edges, cell.drop_paths):
            assert isinstance(drop, DropPath) == (not isinstance(edge, torch.nn.Identity))
            assert not isinstance(drop, DropPath) or drop.p == 0.25


def test_drop_path_is_torchvisions_row_wise_stochastic_depth():
    from torchvision.ops import StochasticDepth

    x = torch.randn(64, 3, 4, 4)
    for p in (0.0, 0.3, 1.0):
        for training in (True, False):
            ours, theirs = DropPath(p).train(training), StochasticDepth(p, "row").train(training)
            torch.manual_seed(0)
            mine = ours(x)
            torch.manual_seed(0)
            assert torch.equal(mine, theirs(x)), (p, training)


def test_the_supernet_builds_no_drop_path():
    model = darts_sg.build_supernet("darts", C=8, layers=3)  # nothing ever sets its probability there
    assert not any(isinstance(m, DropPath) for m in model.modules())
    assert all(len(cell.drop_paths) == len(cell.edges) for cell in model.cells)  # Identities in their place


def test_partial_channel_supernet():
    model = Supernet(darts_sg.SEARCH_SPACES["sgblock"], C=8, layers=3, partial_channels=4)
    assert len(model.alphas()) == 4
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert model.beta_normal.grad is not None and model.beta_normal.grad.abs().sum() > 0
    model.genotype().validate()


def test_partial_channel_edge_runs_the_ops_on_one_part_and_shuffles_the_bypass_in():
    torch.manual_seed(0)
    primitives = ["none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3"]
    edge = MixedOp(8, 1, primitives, OpOptions(), partial_channels=4)
    x, weights = torch.randn(2, 8, 6, 6), torch.softmax(torch.randn(4), -1)
    out = edge(x, weights)
    part = x[:, :2]
    mixed = sum(weights[k] * op(part) for k, op in zip(edge.active, edge.ops))  # the plain edge: each op its own ReLU
    torch.testing.assert_close(out, torch.nn.ChannelShuffle(4)(torch.cat([mixed, x[:, 2:]], 1)))
    # After the shuffle, channel 4g + j holds group j's channel g: the bypassed channels sit untouched at j > 0.
    for channel in range(2, 8):
        g, j = channel % 2, channel // 2
        torch.testing.assert_close(out[:, 4 * g + j], x[:, channel])


def test_edge_normalisation_weights_each_nodes_inputs_and_steers_the_derivation():
    model = Supernet(["none", "skip_connect", "sep_conv_3x3"], C=8, layers=3, steps=2, partial_channels=2)
    with torch.no_grad():
        model.alpha_normal.zero_()  # every op equal: only the betas tell the edges apart
        model.beta_normal.copy_(torch.tensor([0.0, 0.0, 3.0, -3.0, 1.0]))  # node 3: input 0 strong, input 1 weak, node 2 middle
    scales = model.edge_normalisation(model.beta_normal)
    torch.testing.assert_close(scales[:2], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(scales[2:], torch.softmax(torch.tensor([3.0, -3.0, 1.0]), -1))
    normal, _ = model.op_weights()
    torch.testing.assert_close(normal, torch.softmax(model.alpha_normal, -1) * scales[:, None])
    assert [src for _, src in model.genotype().normal[2:]] == [0, 2]  # input 1's edge, the weakest, is dropped


def test_none_op_is_never_computed():
    model = darts_sg.build_supernet("darts", C=4, layers=3)
    edge = model.cells[0].edges[0]
    assert len(edge.ops) == 7  # 8 primitives minus `none`


def _loss_and_grads(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_edge_speed_options_are_exact(partial_channels):
    """Shared ReLU and the fused weighted sum give the reference's loss and every gradient (float64)."""
    torch.manual_seed(0)
    kwargs = dict(C=8, layers=3, steps=2, partial_channels=partial_channels)
    reference = darts_sg.build_supernet("sgblock", **kwargs)
    torch.manual_seed(0)
    fast = accelerate(darts_sg.build_supernet("sgblock", **kwargs), CPU, edge_substitutes())
    assert any(isinstance(m, FusedMixedOp) for m in fast.modules())
    assert fast.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():  # the same initial weights and alphas
        assert torch.equal(fast.state_dict()[name], value), name
    reference.double(), fast.double()
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    loss_ref, grads_ref = _loss_and_grads(reference, x, y)
    loss_fast, grads_fast = _loss_and_grads(fast, x, y)
    assert loss_fast == pytest.approx(loss_ref, rel=1e-12)
    assert grads_fast.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    assert grads_ref["alpha_normal"].abs().sum() > 0


def test_shared_relu_runs_once_per_edge():
    edge = accelerate(MixedOp(4, 1, darts_sg.SEARCH_SPACES["darts"], OpOptions()), CPU, edge_substitutes(fused_sum=False))
    relus = [m for m in edge.modules() if isinstance(m, torch.nn.ReLU)]
    # Only the second stages of the two separable convs keep their own ReLU.
    assert len(relus) == 2 and sum(edge.takes_relu) == 4


def test_weighted_sum_gradients():
    weights = torch.rand(3, dtype=torch.float64, requires_grad=True)
    terms = [torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(WeightedSum.apply, (weights, *terms))
    frozen = weights.detach()  # a weight step: no gradient for the alphas, nothing saved for them
    out = WeightedSum.apply(frozen, *terms)
    out.sum().backward()
    torch.testing.assert_close(terms[1].grad, torch.full_like(terms[1], float(frozen[1])))
