import dataclasses

import pytest
import torch

import darts_sg
from darts_sg.train import memory
from darts_sg.speed.accelerate import accelerate, device_policy
from darts_sg.train.memory import activation_gb, memory_report

CPU = torch.device("cpu")


def _supernet():
    torch.manual_seed(0)
    return darts_sg.build_supernet("sgblock", C=4, layers=3, num_classes=10)


def _saved_gb(model, batch):
    """What autograd keeps for backward after one forward pass, measured directly."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 3, 32, 32))
    return sum(storages.values()) / 1e9


def test_estimate_from_tiny_batches_matches_a_real_batch():
    model = _supernet()
    estimate = activation_gb(model, 24, CPU, channels_last=False)
    measured = _saved_gb(model, 24)
    assert abs(estimate - measured) < 1e-3 * measured  # linear in the batch: the fit is exact


def test_recomputed_cells_need_less():
    model = _supernet()
    stored = activation_gb(model, 32, CPU, channels_last=False)
    model.recompute_cells = True
    recomputed = activation_gb(model, 32, CPU, channels_last=False)
    assert 0 < recomputed < stored and model.recompute_cells


def test_the_probe_changes_neither_batch_norm_statistics_nor_random_state():
    torch.manual_seed(0)
    model = darts_sg.build_network("darts_v2", C=4, layers=5, auxiliary=True)
    model.drop_path_prob = 0.3  # drop path draws random masks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    activation_gb(model, 8, CPU, channels_last=False)
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_report_warns_with_the_flags_that_help_when_memory_is_short(monkeypatch):
    model = _supernet()
    monkeypatch.setattr(memory, "available_gb", lambda device: 1000.0)
    assert "WARNING" not in memory_report(model, 32, CPU)
    monkeypatch.setattr(memory, "available_gb", lambda device: 1e-6)
    line = memory_report(model, 32, CPU)
    assert "WARNING" in line and "--recompute-cells" in line and "--batch-size" in line
    assert "\n" not in line


@pytest.mark.parametrize("lean", [False, True])
def test_report_names_lean_blocks_only_where_the_blocks_run_plain(monkeypatch, lean):
    monkeypatch.setattr(memory, "available_gb", lambda device: 1e-6)
    model = darts_sg.build_supernet("sgblock", C=4, layers=3, num_classes=10, steps=2)
    model = accelerate(model, CPU, dataclasses.replace(device_policy("cpu"), lean_blocks=lean))
    assert ("--lean-blocks" in memory_report(model, 8, CPU)) is not lean
