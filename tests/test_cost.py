"""Search under a budget (darts_sg.train.cost, darts_sg.train.latency): the cost tables, the gradient of the cost term, the
budget at derivation, the latency table's cache, and what they do to a search."""

import json

import pytest
import torch

import darts_sg
from darts_sg.train.architect import Architect
from darts_sg.train.cost import CostPenalty, CostTable, fit_budget, genotype_cost
from darts_sg.utils.errors import UserError
from darts_sg.model.genotype import load_genotype, random_genotype
from darts_sg.train.latency import LatencyMeter
from darts_sg.model.ops import OpOptions, resolve_space
from darts_sg.train.rundir import RunDirectory
from darts_sg.train.config import SEARCH_PRESETS, SearchConfig
from darts_sg.jobs.search import run_search


@pytest.mark.parametrize("kind, C, layers", [("params", 36, 20), ("flops", 8, 5)])
def test_the_table_adds_up_to_the_derived_network(kind, C, layers):
    table = CostTable(kind, resolve_space("sgblock"), 4, C, layers)
    # the random cells put convolutions between a reduction cell's nodes, which run at half its input size
    for genotype in (load_genotype("darts_v2"), load_genotype("darts_v1"), *(random_genotype(resolve_space("sgblock"), 4, s) for s in range(3))):
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


def _search(tmp_path, data_root, name, epochs=2, **cost):
    config = SearchConfig(**{**SEARCH_PRESETS["smoke"], "ops": "darts", "epochs": epochs, "alpha_lr": 0.05,
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
    assert _summary(tmp_path / "loose")["cost"]["budget_met_by"] == "search"
    # a budget just under the plain search's cell, with a cost term of weight 0: the same alphas, and the
    # derivation alone makes the cell meet the budget
    target = (plain_cost - 1) / 1e6
    fitted, fitted_metrics = _search(tmp_path, planted_data_root, "fitted", cost="params", cost_weight=0.0, cost_target=target)
    assert fitted != plain and genotype_cost(fitted, "params", 36, 20) <= target * 1e6
    summary = _summary(tmp_path / "fitted")["cost"]
    assert summary["budget_met_by"] == "derivation" == fitted_metrics[-1]["budget"]
    assert summary["genotype_cost"] == pytest.approx(genotype_cost(fitted, "params", 36, 20) / 1e6)
    assert (summary["kind"], summary["target"], summary["channels"], summary["layers"]) == ("params", target, 36, 20)
    assert load_genotype(str(tmp_path / "fitted" / "genotype.json")) == fitted


def _summary(run) -> dict:
    return json.loads((run / "genotype.json").read_text())["summary"]


@pytest.mark.xdist_group("cost-searches")
def test_a_latency_search_caches_its_table_and_a_resume_reuses_or_refuses_it(tmp_path, planted_data_root, monkeypatch):
    genotype, metrics = _search(tmp_path, planted_data_root, "latency", epochs=1, cost="latency", cost_channels=4, cost_layers=3, cost_weight=1.0)
    table = json.loads((tmp_path / "latency" / "latency.json").read_text())
    assert table["record"]["threads"] == 1 and len(table["ms"]) == 5 * 7 + 1  # the test scale: 5 positions, 7 ops, fixed
    summary = _summary(tmp_path / "latency")["cost"]
    assert metrics[-1]["genotype_cost"] > 0 and summary["unit"] == "ms" and summary["measured_whole"] > 0
    config = SearchConfig.from_dict(RunDirectory(tmp_path / "latency").load_config())
    with monkeypatch.context() as patch:
        patch.setattr(LatencyMeter, "_time", lambda *args: pytest.fail("the cached latency table was measured again"))
        patch.setattr(LatencyMeter, "network", lambda *args: 1.0)  # the final check on the whole network, not a table entry
        assert run_search(config, str(tmp_path / "latency"), resume=True, progress=False) == genotype
    table["record"]["torch"] = "0.0.1"
    (tmp_path / "latency" / "latency.json").write_text(json.dumps(table))
    with pytest.raises(UserError, match="measured on another device \\(torch '0.0.1' there"):
        run_search(config, str(tmp_path / "latency"), resume=True, progress=False)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cost": "joules"}, "--cost must be one of params, flops, latency"),
        ({"cost": "params", "cost_weight": float("nan")}, "--cost-weight must be a finite number"),
        ({"cost": "params", "cost_target": float("inf")}, "--cost-target must be a (finite|positive) number"),
        ({"cost": "params", "cost_target": -1.0}, "--cost-target must be (zero or )?positive"),
        ({"cost": "params", "cost_target": 0.0}, "--cost-target must be a positive number"),
        ({"cost_target": 2.5}, "need --cost params, flops or latency"),
        ({"cost": "latency", "cost_device": "tpu"}, "--cost-device must be cpu or cuda"),
        ({"cost": "latency", "cost_threads": 0}, "--cost-threads must be positive"),
        ({"cost": "params", "cost_channels": 7}, "--cost-channels must be an even number"),
    ],
)
def test_bad_cost_options_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message):
        SearchConfig(**options).validate()


# ----------------------------------------------------------------------------------------- latency


def _tiny_latency_table(meter: LatencyMeter) -> CostTable:
    """The test scale: a 3-cell network at C=4 (two reduction cells), 2 nodes; 5 positions x 7 ops + the fixed part."""
    return CostTable("latency", resolve_space("darts"), 2, 4, 3, meter=meter)


def test_the_latency_table_times_each_op_once_per_distinct_position(tmp_path):
    meter = LatencyMeter(tmp_path / "latency.json", repeats=3)
    table = _tiny_latency_table(meter)
    # positions (C, stride, size): normal (4, 1, 32); reductions (8, 2, 32), (8, 1, 16), (16, 2, 16), (16, 1, 8)
    assert meter.measured == 5 * 7 + 1 == len(meter.table)
    assert table.normal.shape == table.reduce.shape == (5, 8)
    none = table.primitives.index("none")
    assert (table.normal[:, none] == 0).all() and (table.normal.sum(1) > 0).all() and table.fixed > 0
    # edge 4 (node 1 <- node 0) of the two reduction cells runs at half their input size, stride 1
    sep = table.primitives.index("sep_conv_3x3")
    halves = meter.table["sep_conv_3x3 C=8 stride=1 size=16"] + meter.table["sep_conv_3x3 C=16 stride=1 size=8"]
    assert float(table.reduce[4, sep]) == pytest.approx(halves)
    assert float(table.reduce[0, sep]) == pytest.approx(meter.table["sep_conv_3x3 C=8 stride=2 size=32"] + meter.table["sep_conv_3x3 C=16 stride=2 size=16"])
    genotype = random_genotype(table.primitives, 2, 0)
    assert table.total(genotype) == pytest.approx(table.fixed + table.cells_cost(genotype))
    stored = json.loads((tmp_path / "latency.json").read_text())
    assert stored["record"]["threads"] == 1 and stored["record"]["batch"] == 1 and stored["record"]["device"] == "cpu"
    assert stored["ms"] == pytest.approx(meter.table)


def test_the_latency_table_is_reused_and_refused_from_another_device(tmp_path, monkeypatch):
    path = tmp_path / "latency.json"
    first = _tiny_latency_table(LatencyMeter(path, repeats=3))
    monkeypatch.setattr(LatencyMeter, "_time", lambda *args: pytest.fail("a cached latency was measured again"))
    again = LatencyMeter(path)
    reused = _tiny_latency_table(again)
    assert again.measured == 0
    torch.testing.assert_close(reused.normal, first.normal)
    assert reused.fixed == first.fixed
    data = json.loads(path.read_text())
    data["record"]["cpu"] = "Some Other CPU 9000"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"measured on another device \(cpu 'Some Other CPU 9000' there, .* here\).*delete it"):
        LatencyMeter(path)
    with pytest.raises(UserError, match="threads 1 there, 2 here"):
        path.write_text(json.dumps({**data, "record": {**data["record"], "cpu": LatencyMeter().record["cpu"]}}))
        LatencyMeter(path, threads=2)


def test_the_thread_count_is_restored_after_timing():
    before = torch.get_num_threads()
    meter = LatencyMeter(threads=1 if before != 1 else 2, repeats=1)
    meter.op("sep_conv_3x3", 4, 1, 8, OpOptions())
    assert torch.get_num_threads() == before and meter.measured == 1


# ----------------------------------------------------------------------------------------- the budget at derivation


def _planted_weights(primitives, steps: int, favourite: str, runner_up: dict[tuple[int, str], float] | None = None):
    """Softmax-like weights: every edge prefers `favourite` (0.5), node inputs 0 and 1 most; `runner_up`
    gives some (edge row, op) a weight just under it."""
    rows = sum(n + 2 for n in range(steps))
    weights = torch.full((rows, len(primitives)), 0.05, dtype=torch.float64)
    row = 0
    for node in range(steps):
        for src in range(node + 2):
            weights[row, primitives.index(favourite)] = 0.5 if src < 2 else 0.4
            row += 1
    for (r, name), w in (runner_up or {}).items():
        weights[r, primitives.index(name)] = w
    return weights


def _cheapest(table: CostTable) -> float:
    """The cost of the cheapest genotype of the space: per node, its two cheapest inputs at their cheapest op."""
    ops = [o for o, name in enumerate(table.primitives) if name != "none"]
    total, row = table.fixed, 0
    for node in range(table.steps):
        for costs in (table.normal, table.reduce):
            per_input = sorted(float(costs[row + src, ops].min()) for src in range(node + 2))
            total += per_input[0] + per_input[1]
        row += node + 2
    return total


def test_the_budget_is_met_at_derivation_losing_the_least_weight_per_cost_saved():
    primitives = resolve_space("darts")
    table = CostTable("params", primitives, 2, 8, 5)
    # edge row 0 (node 0 <- input 0): max_pool_3x3 almost as strong as the favourite sep_conv_5x5
    normal = _planted_weights(primitives, 2, "sep_conv_5x5", {(0, "max_pool_3x3"): 0.49})
    reduce = _planted_weights(primitives, 2, "sep_conv_5x5")
    from darts_sg.model.genotype import derive_genotype

    argmax = derive_genotype(normal, reduce, primitives, 2)
    assert {op for op in argmax.ops()} == {"sep_conv_5x5"}
    # a budget that one swap meets: the cheapest in lost weight per param saved is the planted edge
    saved_by_pool = float(table.normal[0, primitives.index("sep_conv_5x5")] - table.normal[0, primitives.index("max_pool_3x3")])
    fitted, changes = fit_budget(argmax, normal, reduce, table, table.total(argmax) - 0.5 * saved_by_pool)
    assert changes == 1 and fitted.normal[0] == ("max_pool_3x3", 0) and fitted.normal[1:] == argmax.normal[1:]
    assert fitted.reduce == argmax.reduce
    # any budget down to the cheapest genotype of the space is met; the table is exact for params
    for fraction in (0.8, 0.5, 0.2, 0.0):
        target = _cheapest(table) + fraction * (table.total(argmax) - _cheapest(table))
        fitted, _ = fit_budget(argmax, normal, reduce, table, target)
        fitted.validate(primitives)
        assert table.total(fitted) <= target + 1e-6
        assert genotype_cost(fitted, "params", 8, 5) == pytest.approx(table.total(fitted))
    # a budget already met changes nothing; one below the cheapest genotype ends at the cheapest
    assert fit_budget(argmax, normal, reduce, table, table.total(argmax)) == (argmax, 0)
    cheapest, _ = fit_budget(argmax, normal, reduce, table, 0.5 * _cheapest(table))
    assert table.total(cheapest) == pytest.approx(_cheapest(table))


def test_the_budget_keeps_the_skip_cap():
    primitives = resolve_space("darts")
    table = CostTable("params", primitives, 2, 8, 5)
    weights = _planted_weights(primitives, 2, "sep_conv_5x5")
    from darts_sg.model.genotype import derive_genotype

    argmax = derive_genotype(weights, weights, primitives, 2)
    fitted, _ = fit_budget(argmax, weights, weights, table, 0.0, max_skip=1)
    assert sum(op == "skip_connect" for op, _ in fitted.normal) <= 1


def test_genotype_json_keeps_the_run_summary_and_still_loads(tmp_path):
    genotype = load_genotype("darts_v2")
    genotype.save(tmp_path / "g.json", {"cost": {"kind": "params", "genotype_cost": 3.35}})
    assert json.loads((tmp_path / "g.json").read_text())["summary"]["cost"]["genotype_cost"] == 3.35
    assert load_genotype(str(tmp_path / "g.json")) == genotype
    genotype.save(tmp_path / "old.json")
    assert "summary" not in json.loads((tmp_path / "old.json").read_text())
    assert load_genotype(str(tmp_path / "old.json")) == genotype
