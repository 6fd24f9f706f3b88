"""Warm-up epochs (weights only, alphas frozen) and the PC-DARTS preset and channel shuffle."""

import json

import pytest
import torch

from darts_sg.model.cells import MixedOp
from darts_sg.utils.io import load_checkpoint
from darts_sg.speed.layout import is_channels_last
from darts_sg.model.network import Supernet
from darts_sg.model.ops import OpOptions, SEARCH_SPACES, resolve_space
from darts_sg.train.config import SEARCH_PRESETS, SearchConfig
from darts_sg.jobs.search import run_search
from test_search_cli import assert_same_run, interrupt_after, run_cli, smoke_config


def warmup_config(data_root, **changes):
    return smoke_config(data_root, epochs=2, warmup_epochs=1, subset=64, batch_size=32, deterministic=True,
                        checkpoint_every=1, **changes)  # fmt: skip


def alphas_at(path):
    model = load_checkpoint(path / "checkpoint.pt")["job"]["model"]
    return model["alpha_normal"], model["alpha_reduce"]


def test_warmup_freezes_the_alphas_then_releases_them(tmp_path, data_root, monkeypatch):
    config = warmup_config(data_root)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1, 0)  # stop at the end of the warm-up
        with pytest.raises(KeyboardInterrupt):
            run_search(config, out, progress=False)
    after_warmup = alphas_at(out)
    state = load_checkpoint(out / "checkpoint.pt")["job"]
    assert state["a_optimizer"]["state"] == {}  # no alpha step was taken
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["warmup"] for m in metrics] == [True]
    assert "train_alpha_loss" not in metrics[0] and metrics[0]["train_loss"] > 0
    run_search(config, out, resume=True, progress=False)
    final = alphas_at(out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["warmup"] for m in metrics] == [True, False] and "train_alpha_loss" in metrics[1]
    assert not torch.equal(final[0], after_warmup[0]) and not torch.equal(final[1], after_warmup[1])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in sorted(events.Scalars("search/warmup"), key=lambda e: e.step)] == [1, 0]
    assert [e.value for e in sorted(events.Scalars("search/normal_skips"), key=lambda e: e.step)] == [m["normal_skips"] for m in metrics]
    # after the warm-up the alphas are still those the supernet was initialised with
    torch.manual_seed(config.seed)
    fresh = Supernet(resolve_space(config.ops), config.init_channels, config.layers, 10, config.nodes)
    assert torch.equal(fresh.alpha_normal, after_warmup[0]) and torch.equal(fresh.alpha_reduce, after_warmup[1])


def test_kill_and_resume_mid_warmup_is_exact(tmp_path, data_root, monkeypatch):
    config = warmup_config(data_root)
    straight = tmp_path / "straight"
    run_search(config, straight, progress=False)
    split = tmp_path / "split"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 0, 1)  # inside the warm-up epoch
        with pytest.raises(KeyboardInterrupt):
            run_search(config, split, progress=False)
    run_search(config, split, resume=True, progress=False)
    assert_same_run(straight, split)


def test_warmup_must_leave_epochs_for_the_alphas(tmp_path, data_root):
    result = run_cli("search.py", "--preset", "smoke", "--warmup-epochs", "1", "--out", str(tmp_path / "r"),
                     "--data-root", str(data_root))  # fmt: skip
    assert result.returncode == 2 and "--warmup-epochs" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_pc_darts_preset_has_the_published_settings():
    config = SearchConfig(**SEARCH_PRESETS["pc-darts"])
    assert (config.partial_channels, config.batch_size, config.w_lr, config.w_lr_min) == (4, 256, 0.1, 0.0)
    assert (config.alpha_lr, config.alpha_weight_decay, config.warmup_epochs, config.epochs) == (6e-4, 1e-3, 15, 50)
    assert (config.init_channels, config.layers) == (16, 8)
    config.validate()


def test_channel_shuffle_keeps_the_memory_layout():
    x = torch.randn(2, 8, 5, 5)
    expected = torch.stack([x[:, [0, 2, 4, 6, 1, 3, 5, 7][i]] for i in range(8)], dim=1)  # 4 groups of 2
    shuffle = torch.nn.ChannelShuffle(4)  # what a PC-DARTS edge runs after its partial op
    assert torch.equal(shuffle(x), expected) and shuffle(x).is_contiguous()
    out = shuffle(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(out, expected) and is_channels_last(out)
    op = MixedOp(8, 1, SEARCH_SPACES["darts"], OpOptions(), partial_channels=4)
    y = op(x.contiguous(memory_format=torch.channels_last), torch.softmax(torch.randn(8), 0))
    assert is_channels_last(y)
