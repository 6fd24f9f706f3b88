"""The rule that picks the decisive protocol's alpha learning rate from pilot searches (scripts/decisive_rate.py)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "decisive_rate.py"


@pytest.fixture(scope="module")
def decisive_rate():
    spec = importlib.util.spec_from_file_location("decisive_rate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lowest_rate_below_the_threshold_decides_even_while_higher_ones_run(decisive_rate):
    assert decisive_rate.choose([(0.096, None), (0.048, 0.80)])[0] == 0.048
    assert decisive_rate.choose([(0.096, 0.70), (0.048, 0.80)])[0] == 0.048


def test_a_higher_rate_decides_only_once_every_lower_one_finished_above(decisive_rate):
    assert decisive_rate.choose([(0.048, None), (0.096, 0.70)])[0] is None
    assert decisive_rate.choose([(0.048, 0.90), (0.096, 0.70)])[0] == 0.096


def test_no_rate_when_every_pilot_ended_above_the_threshold(decisive_rate):
    rate, why = decisive_rate.choose([(0.048, 0.90), (0.096, 0.86)])
    assert rate is None and "higher" in why


def test_the_rate_comes_from_the_folder_name(decisive_rate):
    assert decisive_rate.rate_of(Path("results/compare-decisive-alr0.048")) == 0.048
    with pytest.raises(SystemExit, match="alr<rate>"):
        decisive_rate.rate_of(Path("results/compare-decisive"))
