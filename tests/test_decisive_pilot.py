"""The rule that picks the decisive protocol from pilot searches (scripts/decisive_pilot.py)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def decisive_pilot(load_script):
    return load_script("decisive_pilot.py")


def test_the_first_pilot_below_the_threshold_decides_even_while_later_ones_run(decisive_pilot):
    assert decisive_pilot.choose([0.80, None])[0] == 0
    assert decisive_pilot.choose([0.90, 0.80, 0.70])[0] == 1


def test_a_later_pilot_decides_only_once_every_earlier_one_finished_above(decisive_pilot):
    assert decisive_pilot.choose([None, 0.70])[0] is None
    assert decisive_pilot.choose([0.90, 0.70])[0] == 1


def test_no_pilot_when_every_one_ended_above_the_threshold(decisive_pilot):
    index, why = decisive_pilot.choose([0.90, 0.86])
    assert index is None and "another lever" in why


def test_the_finished_pilots_of_the_repository_do_not_decide(decisive_pilot, capsys):
    """The 16x and 32x rate pilots ended at 88.7% and 87.1% of the maximum entropy (results/, committed)."""
    root = Path(__file__).resolve().parents[1] / "results"
    folders = [root / "compare-decisive-alr0.048", root / "compare-decisive-alr0.096"]
    if not all((folder / "search/darts-s0/genotype.json").exists() for folder in folders):
        pytest.skip("the pilot results are not in this checkout")
    assert decisive_pilot.main([str(folder) for folder in folders]) == 1
    err = capsys.readouterr().err
    assert "88.7%" in err and "87.1%" in err and "weight decay 0.001" in err
