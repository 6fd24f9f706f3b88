"""Skip-connection collapse: the P-DARTS cap in the derivation and the DARTS+ early stop of a search."""

import json

import torch

from darts_sg.train.engine import fit
from darts_sg.model.genotype import cap_skips, derive_cell, derive_genotype
from darts_sg.utils.io import load_checkpoint
from darts_sg.model.ops import SEARCH_SPACES
from darts_sg.train.rundir import RunDirectory
from darts_sg.train.config import SEARCH_PRESETS, SearchConfig
from darts_sg.jobs.search import SearchJob
from darts_sg.train.launch import start_run
from darts_sg.train.skip_guard import SkipGuard, count_normal_skips

PRIMITIVES = SEARCH_SPACES["darts"]
SKIP, SEP3, DIL3 = PRIMITIVES.index("skip_connect"), PRIMITIVES.index("sep_conv_3x3"), PRIMITIVES.index("dil_conv_3x3")


def collapsed_weights(steps=4, seed=0):
    """Softmax weights of a normal cell where skip_connect dominates every edge, with known strengths."""
    gen = torch.Generator().manual_seed(seed)
    n_edges = sum(node + 2 for node in range(steps))
    alphas = 0.1 * torch.randn(n_edges, len(PRIMITIVES), generator=gen)
    alphas[:, SKIP] = 3.0 + torch.arange(n_edges) / n_edges  # later edges: stronger skips
    alphas[:, SEP3] = 1.0
    return torch.softmax(alphas, dim=-1)


def test_collapsed_alphas_derive_all_skips_and_the_cap_keeps_the_strongest():
    weights = collapsed_weights()
    plain = derive_cell(weights, PRIMITIVES, 4)
    assert [op for op, _ in plain] == ["skip_connect"] * 8
    capped = cap_skips(weights, PRIMITIVES, 4, max_skip=2)
    ops = [op for op, _ in capped]
    assert ops.count("skip_connect") == 2
    # the two skips kept are the two strongest ones of the plain derivation (the last node's edges)
    assert capped[6:] == plain[6:]
    # the weakest skips were replaced by their edge's next-best op
    assert ops[:6] == ["sep_conv_3x3"] * 6
    assert derive_genotype(weights, weights, PRIMITIVES, 4, max_skip=2).normal == capped
    assert derive_genotype(weights, weights, PRIMITIVES, 4, max_skip=2).reduce == plain  # P-DARTS caps the normal cell only
    assert cap_skips(weights, PRIMITIVES, 4, max_skip=8) == plain
    assert "skip_connect" not in [op for op, _ in cap_skips(weights, PRIMITIVES, 4, max_skip=0)]


def test_cap_can_move_the_edge_choice_to_a_stronger_input():
    weights = collapsed_weights()
    rows = {0: 2, 1: 3, 2: 4}  # node 1: input -> row of the weights
    weights[rows[0], DIL3] = 0.6  # input 0: the weakest skip, but a strong dil_conv
    weights[rows[1], SEP3] = 0.3
    weights[rows[2], SEP3] = 0.01  # input 2: nothing but its skip
    assert {src for _, src in derive_cell(weights, PRIMITIVES, 4)[2:4]} == {1, 2}
    capped = cap_skips(weights, PRIMITIVES, 4, max_skip=0)
    assert capped[2:4] == (("dil_conv_3x3", 0), ("sep_conv_3x3", 1))


def test_skip_guard_counts_epochs_in_a_row():
    guard = SkipGuard(max_skips=1, patience=2)
    assert guard.update(0, 2) is None
    assert guard.update(1, 1) is None  # the streak is broken
    assert guard.update(2, 3) is None
    reason = guard.update(3, 2)
    assert reason and "epoch 4" in reason and guard.stop_reason == reason
    restored = SkipGuard(1, 2)
    restored.load_state_dict(guard.state_dict())
    assert restored.stop_reason == reason and restored.streak == 2
    assert SkipGuard(None).update(0, 8) is None


def test_search_stops_early_on_collapsed_alphas_and_caps_the_genotype(tmp_path, data_root):
    config = SearchConfig(
        **{**SEARCH_PRESETS["smoke"], "ops": "darts", "epochs": 4, "alpha_lr": 1e-6, "data_root": str(data_root),
           "max_skip": 1, "early_stop_skips": 2, "early_stop_epochs": 2}
    )  # fmt: skip
    run = RunDirectory(tmp_path / "run")
    device, _, _, _ = start_run(run, config, resume=False)
    job = SearchJob(config, run, device)
    with torch.no_grad():  # collapse: skip_connect dominates every normal edge
        job.model.alpha_normal[:, SKIP] = 5.0
    records = fit(job, run, config.epochs, progress=False)
    assert [r["epoch"] for r in records] == [1, 2]  # stopped after two epochs over the limit, not four
    assert [r["normal_skips"] for r in records] == [4, 4]  # smoke cells: 2 nodes, 4 edges
    assert "early_stop" not in records[0] and "DARTS+" in records[1]["early_stop"]
    assert count_normal_skips(job.model.genotype(1)) == 1
    for record in records:  # the genotypes written are capped (P-DARTS)
        assert [op for op, _ in record["genotype"]["normal"]].count("skip_connect") == 1
    assert load_checkpoint(run.checkpoint_path)["job"]["skip_guard"]["stop_reason"] == records[1]["early_stop"]
    # a resumed run stays stopped
    again = SearchJob(config, run, device)
    assert fit(again, run, config.epochs, resume=True, progress=False) == [
        json.loads(line) for line in run.metrics_path.read_text().splitlines()
    ]
    assert len(run.read_metrics()) == 2
