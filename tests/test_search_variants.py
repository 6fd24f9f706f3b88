"""Second-order DARTS and PC-DARTS run as whole jobs: kill and resume is exact, and the variant is what runs."""

import pytest
import torch

from darts_sg.train.config import SEARCH_PRESETS

from darts_sg.jobs.search import run_search
from test_search_cli import assert_same_run, interrupt_after, smoke_config
from test_warmup import alphas_at

VARIANTS = {
    "second-order": {"order": 2},
    # the PC-DARTS preset's own settings (partial channels, edge normalisation, learning rates), at smoke size
    "pc-darts": {**SEARCH_PRESETS["pc-darts"], "batch_size": 32, "warmup_epochs": 0},
}


def variant_config(data_root, **changes):
    settings = {"epochs": 1, "subset": 64, "batch_size": 32, "deterministic": True, "checkpoint_every": 1, **changes}
    return smoke_config(data_root, **settings)  # two steps


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_job_resumes_exactly_and_differs_from_plain_first_order(tmp_path, data_root, monkeypatch, variant):
    config = variant_config(data_root, **VARIANTS[variant])
    straight, split, plain = tmp_path / "straight", tmp_path / "split", tmp_path / "plain"
    run_search(config, straight, progress=False)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 0, 1)  # after the first of the two steps
        with pytest.raises(KeyboardInterrupt):
            run_search(config, split, progress=False)
    run_search(config, split, resume=True, progress=False)
    assert_same_run(straight, split)
    # the variant changes the search: the same seed and data under plain first-order DARTS end elsewhere
    run_search(variant_config(data_root), plain, progress=False)
    for ours, theirs in zip(alphas_at(straight), alphas_at(plain)):
        assert not torch.allclose(ours, theirs, atol=1e-6)
