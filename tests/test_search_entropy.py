"""How firmly a finished search chose (scripts/search_entropy.py), on a committed decisive search."""

import shutil
from pathlib import Path

import pytest

SEARCH = Path(__file__).resolve().parents[1] / "results/compare-decisive-alr0.048-awd0/search/sgblock-s0"


@pytest.fixture(scope="module")
def search_entropy(load_script):
    if not (SEARCH / "alphas.jsonl").exists():
        pytest.skip("the decisive searches are not in this checkout")
    return load_script("search_entropy.py")


def test_a_finished_search_gives_its_entropy_per_epoch_as_the_report_does(search_entropy):
    line = search_entropy.describe(SEARCH)
    # the decisive report: 69.5% after the last of 7 epochs (entropy 1.431 / 1.623 nats of ln 9), stable since 7
    assert "89.3, 81.4, 80.0, 75.4, 72.9, 68.4, 69.5 % of the maximum (epochs 1-7)" in line, line
    assert "1092 alpha steps (alpha lr 0.048, weight decay 0)" in line and "stable since epoch 7" in line
    assert "sg_block on 1 normal / 0 reduction edges" in line


def test_an_unfinished_search_says_how_far_it_is(search_entropy, tmp_path):
    run = Path(shutil.copytree(SEARCH, tmp_path / "run"))
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(metrics[:3]) + "\n")
    assert search_entropy.describe(run) == f"{run}: unfinished (3 of 7 epochs)"
