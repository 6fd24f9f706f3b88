"""Search under a budget (darts_sg.cost): the cost table, the gradient of the cost term, and what it does to a search."""

import pytest
import torch

import darts_sg
from darts_sg.architect import Architect
from darts_sg.cost import CostPenalty, CostTable, genotype_cost
from darts_sg.errors import UserError
from darts_sg.genotype import load_genotype
from darts_sg.ops import resolve_space
from darts_sg.runs import RunDirectory
from darts_sg.config import SEARCH_PRESETS, SearchConfig
from darts_sg.search import run_search


@pytest.mark.parametrize("kind, C, layers", [("params", 36, 20), ("flops", 8, 5)])
def test_the_table_adds_up_to_the_derived_network(kind, C, layers):
    table = CostTable(kind, resolve_space("sgblock"), 4, C, layers)
    for genotype in (load_genotype("darts_v2"), load_genotype("darts_v1")):
        assert table.fixed + table.cells_cost(genotype) == pytest.approx(genotype_cost(genotype, kind, C, layers), rel=1e-9)
    if kind == "params":
        assert genotype_cost(load_genotype("darts_v2"), "params") == pytest.approx(3.35e6, rel=0.01)  # DARTS reports 3.3 M


def test_the_cost_gradient_is_the_expected_cost_gradient():
    """d E / d alpha[e, o] = share[e] * p[e, o] * (c[e, o] - sum_o' p[e, o'] c[e, o']) for each cell type."""
    torch.manual_seed(0)
    model = darts_sg.build_supernet("darts", C=4, layers=3, steps=4)
    with torch.no_grad():
        for alpha in model.alphas():
            alpha.normal_()
    table = CostTable("params", model.primitives, 4, 36, 20)
    penalty = CostPenalty(table, model, weight=1.0)
    grads = torch.autograd.grad(penalty(), model.alphas())
    for alpha, costs, grad in zip(model.alphas(), (table.normal, table.reduce), grads):
        p = torch.softmax(alpha.detach().double(), -1)
        costs = costs.double()
        analytic = table.edge_share.double()[:, None] * p * (costs - (p * costs).sum(-1, keepdim=True)) / penalty.reference
        torch.testing.assert_close(grad.double(), analytic, rtol=1e-4, atol=1e-12)


def test_the_architect_adds_the_cost_gradient_to_the_alpha_step(monkeypatch):
    model = darts_sg.build_supernet("darts", C=4, layers=3, steps=2)
    architect = Architect(model, order=1)
    architect.optimizer = torch.optim.SGD(model.alphas(), lr=1.0)  # the step is then minus the gradient itself
    architect.penalty = CostPenalty(CostTable("params", model.primitives, 2, 8, 5), model, weight=3.0)
    zero = [torch.zeros_like(a) for a in model.alphas()]
    monkeypatch.setattr(architect, "alpha_grads", lambda *args: (zero, torch.tensor(0.0)))
    expected = torch.autograd.grad(architect.penalty(), model.alphas())
    before = [a.detach().clone() for a in model.alphas()]
    batch = (torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    architect.step(batch, batch, torch.optim.SGD(model.weights(), 0.1), 0.1)
    for a, b, g in zip(model.alphas(), before, expected):
        torch.testing.assert_close(a.detach(), b - g)
    assert any(g.abs().max() > 0 for g in expected)


def _search(tmp_path, data_root, name, **cost):
    config = SearchConfig(**{**SEARCH_PRESETS["smoke"], "ops": "darts", "epochs": 2, "alpha_lr": 0.05,
                             "data_root": str(data_root), **cost})  # fmt: skip
    genotype = run_search(config, str(tmp_path / name), progress=False)
    return genotype, RunDirectory(tmp_path / name).read_metrics()


@pytest.mark.xdist_group("cost-searches")
def test_a_heavy_cost_term_derives_a_cheaper_cell_and_a_loose_target_changes_nothing(tmp_path, planted_data_root):
    plain, _ = _search(tmp_path, planted_data_root, "plain")
    cheap, metrics = _search(tmp_path, planted_data_root, "cheap", cost="params", cost_weight=20.0)
    plain_cost = genotype_cost(plain, "params", 36, 20)
    assert genotype_cost(cheap, "params", 36, 20) < plain_cost
    assert metrics[-1]["genotype_cost"] == pytest.approx(genotype_cost(cheap, "params", 36, 20) / 1e6)
    assert metrics[-1]["expected_cost"] < metrics[0]["expected_cost"] or len(metrics) == 1
    # a budget above what the unconstrained search costs: zero gradient, the very same search
    loose, loose_metrics = _search(tmp_path, planted_data_root, "loose", cost="params", cost_weight=20.0, cost_target=1000.0)
    assert loose == plain
    assert loose_metrics[-1]["expected_cost"] < 1000.0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cost": "latency"}, "--cost must be one of params, flops"),
        ({"cost": "params", "cost_weight": float("nan")}, "--cost-weight must be a finite number"),
        ({"cost": "params", "cost_target": float("inf")}, "--cost-target must be a (finite|positive) number"),
        ({"cost": "params", "cost_target": -1.0}, "--cost-target must be (zero or )?positive"),
        ({"cost": "params", "cost_target": 0.0}, "--cost-target must be a positive number"),
        ({"cost_target": 2.5}, "need --cost params or --cost flops"),
        ({"cost": "params", "cost_channels": 7}, "--cost-channels must be an even number"),
    ],
)
def test_bad_cost_options_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message):
        SearchConfig(**options).validate()
