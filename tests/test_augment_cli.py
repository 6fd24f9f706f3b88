import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darts_sg.train.config import AugmentConfig

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "augment.py"), *args], capture_output=True, text=True, timeout=300)


def test_augment_learns_a_planted_slice_and_reports(planted_training_run, planted_data_root, read_hparams):
    out, summary = planted_training_run
    # Two planted classes (chance 50%): one epoch of 10 steps must reach 80% on the 64 held-out images.
    assert summary["test_acc"] >= 0.80, summary["test_acc"]
    assert summary["params"] > 0 and summary["params_with_aux"] > summary["params"]
    assert summary["flops"] > 0 and summary["latency_ms"] > 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "drop_path_prob"):
        assert key in record
    state = torch.load(out / "model.pt", weights_only=True)
    assert any(k.startswith("aux_head.") for k in state)
    assert json.loads((out / "summary.json").read_text())["params"] == summary["params"]
    stored = json.loads((out / "config.json").read_text())["genotype"]
    assert json.loads(stored)["normal"][0] == ["sep_conv_3x3", 0]  # the architecture itself is recorded
    settings, metric_tags, events = read_hparams(out / "tensorboard" / "hparams")
    assert settings["layers"] == 3 and settings["drop_path"] == pytest.approx(0.2) and settings["data_root"] == str(planted_data_root)
    assert {"hparams/test_acc", "hparams/params", "hparams/latency_ms"} <= metric_tags
    assert events.Scalars("hparams/test_acc")[0].value == pytest.approx(summary["test_acc"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert scalars.Scalars("train/lr")[0].value == pytest.approx(0.025)
    assert scalars.Scalars("train/drop_path_prob")[0].value == 0.0  # ramped from 0 at the first epoch


def test_flop_counter_matches_reference_magnitude():
    import darts_sg
    from darts_sg.model.measure import flops_per_image

    model = darts_sg.build_network("darts_v2", C=36, layers=20)
    flops = flops_per_image(model, torch.device("cpu"))
    assert 1.0e9 < flops < 1.12e9  # ../shared/BASELINES.md: 1.06 GFLOP per image


@pytest.mark.parametrize(
    "genotype, message",
    [
        ('{"normal": [', "not valid JSON"),
        ("Genotype(normal=__import__('os').system('echo hi'))", "not allowed"),
        ("no_such_genotype", "neither a file"),
    ],
)
def test_bad_genotype_is_one_line_and_exit_2(tmp_path, data_root, genotype, message):
    result = run_cli("--preset", "smoke", "--genotype", genotype, "--out", str(tmp_path / "r"), "--data-root", str(data_root))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "hi" not in result.stdout
    assert not (tmp_path / "r").exists()


def test_genotype_outside_space_is_refused(tmp_path, data_root):
    result = run_cli("--preset", "smoke", "--genotype", "darts_v2", "--space", "none,max_pool_3x3,skip_connect",
                     "--out", str(tmp_path / "r"), "--data-root", str(data_root))  # fmt: skip
    assert result.returncode == 2 and "not in the chosen space" in result.stderr


def test_every_setting_is_checked_or_free_on_resume():
    from dataclasses import fields

    from darts_sg.train.config import SearchConfig
    from darts_sg.train.launch import RUNTIME_KEYS

    for cls in (SearchConfig, AugmentConfig):
        names = {f.name for f in fields(cls)}
        assert names == set(cls.IDENTITY) | (RUNTIME_KEYS & names), f"{cls.__name__}: a setting would be ignored on resume"


def test_resume_with_another_space_is_refused(planted_training_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(planted_training_run[0], run)
    before = (run / "config.json").read_text()
    result = run_cli("--resume", str(run), "--space", "invres")
    assert result.returncode == 2 and "space is None there but 'invres' was asked for" in result.stderr, result.stderr
    assert (run / "config.json").read_text() == before
