"""The table of the paper's claims beside ours (scripts/claims_table.py), on the committed medium comparison."""

import json
import re

import pytest


@pytest.fixture(scope="module")
def claims_table(load_script):
    module = load_script("claims_table.py")
    if not (module.MEDIUM / "rows.json").exists():
        pytest.skip("the medium comparison's results are not in this checkout")
    return module


def rows_of(table, claim_start):
    return [row for row in table if row[0].startswith(claim_start)]


def test_the_medium_rows_repeat_the_comparison_report(claims_table, monkeypatch, tmp_path):
    monkeypatch.setattr(claims_table, "PARAMS", tmp_path / "no-parameter-searches")
    table = claims_table.claims(None)
    report = (claims_table.MEDIUM / "report.md").read_text()
    (accuracy,) = rows_of(table, "The sandglass space")
    assert "-0.24 points [-0.65, +0.16]" in accuracy[2] and "-0.24 points, 95% CI [-0.65, +0.16]" in report
    (params,) = rows_of(table, "Sandglass cells")
    assert params[2].startswith("3.60 ± 0.24 M vs 4.06 ± 0.33 M: **-11% [") and params[3] == "4 + 4"
    assert len(rows_of(table, "Searched cells beat random")) == 3
    pooled = re.search(r"pooled over the spaces: std (\d+\.\d+) points", report)
    if pooled:  # DARTS_V2 retrained with several seeds
        (noise,) = rows_of(table, "The noise of retraining one cell")
        assert f"pooled over the spaces: {pooled.group(1)} points" in noise[2]


def test_a_decisive_protocol_is_compared_with_the_medium_random_cells(claims_table, tmp_path):
    def unit(space, seed, params, acc=None):
        return {"kind": "searched", "space": space, "seed": seed, "paper_params": params, "sg_block_edges": 2,
                "entropy_normal": 1.5, "entropy_reduce": 1.5, "test_acc": acc}

    sg = [unit("sgblock", s, p, a) for s, p, a in zip(range(4), (3.0e6, 3.1e6, 2.9e6, 3.0e6), (0.90, 0.91, 0.90, 0.89))]
    darts = [unit("darts", s, p, a) for s, p, a in zip(range(4), (4.0e6, 4.1e6, 3.9e6, 4.0e6), (0.88, 0.88, 0.89, 0.87))]
    (tmp_path / "genotypes.json").write_text(json.dumps(sg + darts))
    (tmp_path / "rows.json").write_text(json.dumps(sg + darts))
    table = [row for row in claims_table.claims(tmp_path) if row[4].startswith("decisive")]
    (params,) = rows_of(table, "Sandglass cells")
    assert "**-25% [" in params[2] and "4 of 4 sandglass cells use `sg_block`" in params[2]
    (accuracy,) = rows_of(table, "The sandglass space")
    assert "**+2.00 points [" in accuracy[2]
    versus_random = rows_of(table, "Searched cells beat random")
    assert [row[3] for row in versus_random] == ["4 + 3", "4 + 3"]  # the medium's 3 random cells per space


def test_the_readme_block_is_replaced_and_a_missing_block_is_named(claims_table):
    begin, end = claims_table.README_BEGIN, claims_table.README_END
    text = f"intro\n{begin}\nold table\n{end}\nafter\n"
    assert claims_table.replace_between(text, begin, end, "new\n") == f"intro\n{begin}\nnew\n{end}\nafter\n"
    with pytest.raises(SystemExit, match="no '<!-- claims"):
        claims_table.replace_between("no block here", begin, end, "new\n")
