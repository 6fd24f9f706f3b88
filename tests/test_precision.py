"""Mixed precision: --amp bf16|fp16|off, fp16 loss scaling for weights and alphas, skipped steps, refusals."""

import json

import pytest
import torch

import darts_sg
from darts_sg.train.architect import Architect, frozen
from darts_sg.train.config import RunConfig, SearchConfig
from darts_sg.train.engine import EpochTotals, weight_step
from darts_sg.utils.errors import UserError
from darts_sg.utils.io import load_checkpoint
from darts_sg.speed.precision import autocast, check_amp, grad_scaler
from darts_sg.jobs.search import run_search

from test_search_cli import smoke_config

CPU = torch.device("cpu")


def _tiny_search(scale: float):
    torch.manual_seed(0)
    model = darts_sg.build_supernet("sgblock", C=4, layers=3, num_classes=10, steps=2)
    w_opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9)
    w_scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    architect = Architect(model, 3e-3, order=1, scaler=torch.amp.GradScaler("cpu", init_scale=scale))
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    return model, w_opt, w_scaler, architect, batch


def _fp16_step(model, w_opt, w_scaler, architect, batch):
    with autocast(CPU, "fp16"):
        _, alpha_skipped = architect.step(batch, batch, w_opt, 0.025)
        with frozen(model.alphas()):
            loss, _, weight_skipped = weight_step(model, w_opt, batch, 5.0, scaler=w_scaler)
    return loss, int(alpha_skipped), int(weight_skipped)


def test_fp16_steps_scale_the_loss_and_move_weights_and_alphas():
    model, w_opt, w_scaler, architect, batch = _tiny_search(2.0**10)
    alphas = [a.clone() for a in model.alphas()]
    weights = [w.clone() for w in model.weights()]
    loss, alpha_skipped, weight_skipped = _fp16_step(model, w_opt, w_scaler, architect, batch)
    assert torch.isfinite(loss) and (alpha_skipped, weight_skipped) == (0, 0)
    assert all(not torch.equal(a, b) for a, b in zip(alphas, model.alphas()))
    assert any(not torch.equal(w, b) for w, b in zip(weights, model.weights()))
    assert w_scaler.get_scale() == 2.0**10  # no overflow: the scale stays


def test_an_fp16_overflow_skips_both_steps_and_lowers_the_scale():
    # a loss scale of 2^60 overflows fp16 gradients at once
    model, w_opt, w_scaler, architect, batch = _tiny_search(2.0**60)
    alphas = [a.clone() for a in model.alphas()]
    weights = [w.clone() for w in model.weights()]
    _, alpha_skipped, weight_skipped = _fp16_step(model, w_opt, w_scaler, architect, batch)
    assert (alpha_skipped, weight_skipped) == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(alphas, model.alphas()))
    assert all(torch.equal(w, b) for w, b in zip(weights, model.weights()))
    assert w_scaler.get_scale() == 2.0**59 and architect.scaler.get_scale() == 2.0**59


def test_without_fp16_the_scaler_is_a_pass_through():
    assert not grad_scaler(CPU, "bf16").is_enabled() and not grad_scaler(CPU, "off").is_enabled()
    assert grad_scaler(CPU, "fp16").is_enabled()


def test_skipped_steps_are_counted_not_averaged():
    totals = EpochTotals()
    totals.add({"loss": 2.0, "skipped_weight_steps": 1.0}, 32, 1.0)
    totals.add({"loss": 1.0, "skipped_weight_steps": 0.0}, 32, 1.0)
    summary = totals.summary()
    assert summary["train_loss"] == 1.5 and summary["skipped_weight_steps"] == 1.0


def test_bf16_on_a_gpu_without_it_names_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(UserError, match=r"Tesla T4 has no bf16 support; use --amp fp16"):
        check_amp("bf16", torch.device("cuda"))
    check_amp("fp16", torch.device("cuda"))  # fp16 needs no support check


def test_second_order_with_fp16_is_refused():
    with pytest.raises(UserError, match="--order 2 does not support --amp fp16"):
        SearchConfig(order=2, amp="fp16").validate()
    model = darts_sg.build_supernet("darts", C=4, layers=3, num_classes=10, steps=2)
    with pytest.raises(UserError, match="second-order"):
        Architect(model, order=2, scaler=grad_scaler(CPU, "fp16"))


def test_configs_from_before_fp16_read_amp_as_bf16_or_off():
    assert RunConfig.from_dict({"amp": True}).amp == "bf16"
    assert RunConfig.from_dict({"amp": False}).amp == "off"
    with pytest.raises(UserError, match="--amp must be one of off, bf16, fp16"):
        RunConfig(amp="fp8").validate()


def test_fp16_search_counts_skipped_steps_and_checkpoints_the_scales(tmp_path, data_root):
    out = tmp_path / "fp16"
    # half the smoke preset's images: fp16 convolutions on a CPU without fp16 arithmetic are slow
    run_search(smoke_config(data_root, amp="fp16", subset=32, batch_size=16), out, progress=False)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((out / "config.json").read_text())["acceleration"]["amp"] == "fp16"
    job = load_checkpoint(out / "checkpoint.pt")["job"]
    # a scaler starts at 2^16 and halves at every skipped step (it grows only after 2,000 clean ones):
    # the checkpointed scales are the counted skips, so both counts and both scales were kept
    for scaler, counted in (("w_scaler", "skipped_weight_steps"), ("a_scaler", "skipped_alpha_steps")):
        skipped = sum(epoch[counted] for epoch in epochs)
        assert skipped == int(skipped) and job[scaler]["scale"] == 2.0**16 * 0.5**skipped, (scaler, skipped, job[scaler])
