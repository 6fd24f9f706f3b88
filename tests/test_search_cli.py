import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darts_sg.utils.io import load_checkpoint
from darts_sg.train.config import SEARCH_PRESETS, SearchConfig
from darts_sg.jobs.search import run_search

ROOT = Path(__file__).resolve().parents[1]


def smoke_config(data_root, **changes) -> SearchConfig:
    values = {**SEARCH_PRESETS["smoke"], "data_root": str(data_root), **changes}
    return SearchConfig(**values)


def run_cli(script, *args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, env=env, timeout=300)


def test_search_cli_smoke_writes_a_run(tmp_path, data_root):
    out = tmp_path / "run"
    result = run_cli(
        "search.py", "--preset", "smoke", "--ops", "sgblock", "--out", str(out), "--data-root", str(data_root), "--no-progress",
        "--device", "cpu", "--native-dilated",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "genotype: Genotype(" in result.stdout
    assert "memory: a step needs ~" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["ops"] == "sgblock" and config["layers"] == 3
    # what was applied: the CPU policy, with the flag given explicitly overriding it
    from darts_sg.speed.accelerate import device_policy

    assert config["channels_last"] is None and config["fast_dilated"] is False
    assert config["acceleration"] == {**device_policy("cpu").to_dict(), "fast_dilated": False}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "train_seconds"):
        assert key in metrics[0]
    genotype = json.loads((out / "genotype.json").read_text())
    assert len(genotype["normal"]) == 4  # smoke: 2 nodes
    assert (out / "genotypes" / "epoch_001.json").exists()
    assert list((out / "tensorboard").glob("events.*"))
    # the smoke preset draws no alpha figures per epoch; the alphas they would show are recorded
    assert config["figures"] is False and not (out / "figures").exists() and (out / "alphas.jsonl").exists()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and {"model", "w_optimizer", "a_optimizer", "scheduler"} <= set(state["job"])


def interrupt_after(monkeypatch, epoch, step):
    """Make the run die (as a kill would) right after writing the checkpoint at (epoch, step)."""
    from darts_sg.train import engine

    original = engine.save_checkpoint

    def save_then_die(path, state):
        original(path, state)
        if (state["epoch"], state["step"]) == (epoch, step):
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)


def assert_same_run(a: Path, b: Path):
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for key, value in ca["job"]["model"].items():
        assert torch.equal(value, cb["job"]["model"][key]), key
    def metrics(path):
        return [
            {k: v for k, v in json.loads(line).items() if "seconds" not in k and "per_s" not in k}
            for line in (path / "metrics.jsonl").read_text().splitlines()
        ]
    assert metrics(a) == metrics(b)
    assert (a / "genotype.json").read_text() == (b / "genotype.json").read_text()


def resumable_config(data_root) -> SearchConfig:
    return smoke_config(data_root, epochs=2, deterministic=True, subset=128, batch_size=32, checkpoint_every=2)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_root) -> Path:
    """One uninterrupted run, which every interrupted-and-resumed run must reproduce."""
    straight = tmp_path_factory.mktemp("straight") / "run"
    run_search(resumable_config(data_root), straight, progress=False)
    return straight


@pytest.mark.xdist_group("search-cli-straight-run")  # one pytest-xdist worker makes the straight run once
@pytest.mark.parametrize("epoch, step", [(1, 0), (0, 2)], ids=["epoch-boundary", "mid-epoch"])
def test_resume_continues_with_identical_state(tmp_path, data_root, straight_run, monkeypatch, epoch, step):
    config = resumable_config(data_root)
    split = tmp_path / "split"
    with monkeypatch.context() as patch:
        interrupt_after(patch, epoch, step)
        with pytest.raises(KeyboardInterrupt):
            run_search(config, split, progress=False)
    assert load_checkpoint(split / "checkpoint.pt")["step"] == step
    run_search(config, split, resume=True, progress=False)
    assert_same_run(straight_run, split)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ops", "conv_9x9"], "unknown search space or op 'conv_9x9'"),
        (["--order", "3"], "--order"),
        (["--layers", "0"], "--layers"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(tmp_path, data_root, args, message):
    result = run_cli("search.py", "--preset", "smoke", "--out", str(tmp_path / "r"), "--data-root", str(data_root), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "r").exists()


def test_missing_data_and_existing_run_are_refused(tmp_path, data_root):
    result = run_cli("search.py", "--preset", "smoke", "--out", str(tmp_path / "r"), "--data-root", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "CIFAR-10" in result.stderr
    run = tmp_path / "done"
    run.mkdir()
    (run / "config.json").write_text("{}")
    result = run_cli("search.py", "--preset", "smoke", "--out", str(run), "--data-root", str(data_root))
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (run / "config.json").read_text() == "{}"


def test_resume_with_other_configuration_is_refused(tmp_path, data_root):
    out = tmp_path / "r"
    run_search(smoke_config(data_root), out, progress=False)
    before = (out / "checkpoint.pt").read_bytes()
    result = run_cli("search.py", "--resume", str(out), "--layers", "5", "--data-root", str(data_root))
    assert result.returncode == 2 and "layers" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("script, cls", [("search.py", "SearchConfig"), ("augment.py", "AugmentConfig")])
def test_help_documents_every_setting(script, cls):
    import dataclasses

    import darts_sg.jobs.search
    import darts_sg.jobs.augment

    config_cls = getattr(darts_sg.jobs.search, cls, None) or getattr(darts_sg.jobs.augment, cls)
    result = run_cli(script, "--help")
    assert result.returncode == 0
    for field in dataclasses.fields(config_cls):
        assert f"--{field.name.replace('_', '-')}" in result.stdout, field.name
    for option in ("--preset", "--out", "--resume"):
        assert option in result.stdout


def test_recomputed_cells_give_the_same_run(tmp_path, data_root):
    config = smoke_config(data_root, deterministic=True, subset=64, batch_size=32)
    run_search(config, tmp_path / "stored", progress=False)
    run_search(smoke_config(data_root, deterministic=True, subset=64, batch_size=32, recompute_cells=True), tmp_path / "recomputed", progress=False)
    assert json.loads((tmp_path / "recomputed" / "config.json").read_text())["recompute_cells"] is True
    assert_same_run(tmp_path / "stored", tmp_path / "recomputed")


@pytest.mark.parametrize("command, cls", [("search", "SearchConfig"), ("augment", "AugmentConfig")])
def test_help_defaults_come_from_the_config_dataclasses(command, cls):
    import dataclasses

    import darts_sg.jobs.augment
    from darts_sg import cli
    from darts_sg.speed.accelerate import FLAGS

    config_cls = getattr(darts_sg.jobs.search, cls, None) or getattr(darts_sg.jobs.augment, cls)
    helps = {p.name: p.help for p in getattr(cli, command).params}
    checked = 0
    for field in dataclasses.fields(config_cls):
        if field.name not in helps or field.default is None:
            continue
        default = {True: "on", False: "off"}.get(field.default, field.default) if isinstance(field.default, bool) else field.default
        assert f"[default: {default}" in helps[field.name], field.name
        checked += 1
    assert checked > 20
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    # a speed flag left to the device's policy says "auto"; one a job fixes (augment's lean_blocks) was checked above
    assert all("[default: auto" in helps[name] for name in FLAGS if name in helps and defaults.get(name) is None)
    source = (ROOT / "darts_sg" / "cli.py").read_text()
    assert source.count("[default:") == 2  # the two f-strings of help_with_default; none typed by hand
