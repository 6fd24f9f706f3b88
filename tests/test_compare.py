import json
import math
import shutil
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch

from darts_sg.experiment.compare import COMPARE_SCALES, CompareSpec, Unit, parse_overrides, run_compare, units_of
from darts_sg.experiment.report import (
    _at_equal_size, _compute_line, _p_value, _size_effect, accuracy_vs_params_png, render_markdown,
    mean_pm, ratio_interval, size_adjusted_differences, size_association, welch_interval,
)
from darts_sg.utils.errors import UserError
from darts_sg.model.genotype import load_genotype, random_genotype
from darts_sg.model.ops import resolve_space
from darts_sg.train.process import machine_name
from darts_sg.train.config import SearchConfig
from darts_sg.plots.visualize import dot_available

ROOT = Path(__file__).resolve().parents[1]


def test_compare_smoke_runs_searched_random_and_reference_units_reports_and_resumes(tmp_path, data_root):
    spec = CompareSpec(spaces=["darts", "sgblock"], seeds=[0], preset="smoke", data_root=str(data_root), random=1,
                       references=["darts_v2"])  # fmt: skip
    out = tmp_path / "cmp"
    rows = run_compare(spec, out, log=lambda m: None)
    assert [r["name"] for r in rows] == ["darts_v2", "darts-s0", "sgblock-s0", "darts-random0", "sgblock-random0"]
    assert [r["kind"] for r in rows] == ["reference", "searched", "searched", "random", "random"]
    for name in ("report.md", "rows.json", "rows.csv", "accuracy_vs_params.png", "accuracy_vs_cost.png", "cells/darts-random0_normal.gv",
                 "alphas/darts-s0_normal.png", "alphas/sgblock-s0_reduce.png"):
        assert (out / name).exists(), name
    png = (out / "accuracy_vs_params.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (720, 480)
    # the DARTS_V2 unit trained DARTS_V2; the random units trained the genotypes their seeds give
    assert rows[0]["genotype"] == json.loads((out / "genotypes" / "darts_v2.json").read_text())
    expected = random_genotype(resolve_space("sgblock"), 2, seed="sgblock-0")
    assert rows[4]["genotype"] == expected.to_dict()
    # paper-scale parameter count of DARTS_V2: the reference implementation's 3,349,342
    assert rows[0]["paper_params"] == 3_349_342
    assert rows[1]["alpha_steps"] == 2 and rows[1]["stable_since_epoch"] == 1
    assert 0 < rows[1]["entropy_normal"] <= math.log(8) + 1e-9
    # every epoch of the search and the retraining recorded this machine
    assert rows[1]["machines"] == machine_name(torch.device("cpu")) and rows[1]["machines"].startswith("cpu: ")
    report = (out / "report.md").read_text()
    assert "Status: 5 of 5 units finished" in report and "| darts_v2 | " in report and "| sgblock-random0 |" in report
    if dot_available():  # the cells of the reference and of each space's first search, drawn and shown
        assert all(f"](cells/{u}_{c}.png)" in report for u in ("darts_v2", "darts-s0", "sgblock-s0") for c in ("normal", "reduce"))
        assert "](cells/darts-random0_normal.png)" not in report
    assert len((out / "rows.csv").read_text().splitlines()) == 6
    # a second call finds every unit finished and runs nothing again
    kept = [out / "augment" / "darts-s0" / "checkpoint.pt", out / "alphas" / "darts-s0_normal.png"]
    before = [p.stat().st_mtime_ns for p in kept]
    messages = []
    run_compare(spec, out, log=messages.append)
    assert len(messages) == 5 and all("finished earlier" in m for m in messages)
    assert [p.stat().st_mtime_ns for p in kept] == before  # nothing trained, nothing drawn again
    assert json.loads((out / "rows.json").read_text()) == rows
    # a unit folder copied without its checkpoint and summary (committed results) starts again cleanly
    (out / "augment" / "darts-random0" / "checkpoint.pt").unlink()
    (out / "augment" / "darts-random0" / "summary.json").unlink()
    again = run_compare(spec, out, log=lambda m: None)
    assert again[3]["test_acc"] == rows[3]["test_acc"] and again[3]["genotype"] == rows[3]["genotype"]


def test_search_only_comparison_retrains_nothing_then_a_full_run_retrains_without_searching_again(tmp_path, data_root):
    spec = CompareSpec(spaces=["darts", "sgblock"], seeds=[0], preset="smoke", data_root=str(data_root), random=1,
                       references=["darts_v2"], search_only=True)  # fmt: skip
    out = tmp_path / "cmp"
    rows = run_compare(spec, out, log=lambda m: None)
    assert [r["name"] for r in rows] == ["darts_v2", "darts-s0", "sgblock-s0", "darts-random0", "sgblock-random0"]
    assert not (out / "augment").exists() and not (out / "rows.json").exists()
    assert json.loads((out / "genotypes.json").read_text()) == rows
    assert rows[0]["paper_params"] == 3_349_342 and rows[0]["sg_block_normal"] == rows[0]["sg_block_reduce"] == 0
    searched = rows[2]
    assert searched["sg_block_normal"] + searched["sg_block_reduce"] == searched["sg_block_edges"]
    assert searched["genotype"] == load_genotype(str(out / "search" / "sgblock-s0" / "genotype.json")).to_dict()
    png = (out / "params_by_space.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "searches only, nothing retrained" in report and "Status: 5 of 5 units finished" in report
    assert "| sgblock | searched | 1 |" in report and "| DARTS_V2 | reference | 1 | 3.35 |" in report
    messages = []
    run_compare(spec, out, log=messages.append)
    assert len(messages) == 5 and all("finished earlier" in m for m in messages)
    # the same experiment without --search-only retrains every unit and keeps the finished searches
    search_checkpoint = out / "search" / "darts-s0" / "checkpoint.pt"
    before = search_checkpoint.stat().st_mtime_ns
    full = run_compare(CompareSpec(**{**spec.__dict__, "search_only": False}), out, log=lambda m: None)
    assert all(r is not None and 0 <= r["test_acc"] <= 1 for r in full)
    assert search_checkpoint.stat().st_mtime_ns == before
    assert [r["genotype"] for r in full] == [r["genotype"] for r in rows]


def test_reference_seeds_retrain_one_genotype_several_times_and_the_report_measures_that_noise(tmp_path):
    from darts_sg.experiment.plan import genotype_path

    spec = CompareSpec(spaces=["darts", "sgblock"], seeds=[0, 1, 2, 3], references=["darts_v2"], reference_seeds=[0, 1, 2])
    units = units_of(spec)
    assert [u.name for u in units[:4]] == ["darts_v2", "darts_v2-s1", "darts_v2-s2", "darts-s0"]
    assert [u.seed for u in units[:3]] == [0, 1, 2]
    assert len({genotype_path(tmp_path, u) for u in units[:3]}) == 1  # one genotype file for its seeds

    def row(kind, space, seed, acc):
        name = Unit(kind, space, seed).name
        return {"name": name, "kind": kind, "space": space, "seed": seed, "test_acc": acc, "params": 250_000 + seed,
                "flops": 8e7, "paper_params": 3.35e6, "paper_flops": 1e9, "sg_block_edges": 0, "inv_res_edges": 0,
                "normal_skips": 2, "search_val_acc": 0.6, "alpha_steps": 1092, "stable_since_epoch": 5,
                "entropy_normal": 2.0, "entropy_reduce": 2.0, "search_seconds": 900.0, "train_seconds": 1500.0}  # fmt: skip

    reference = [0.880, 0.884, 0.882]
    darts, sgblock = [0.870, 0.880, 0.890, 0.878], [0.872, 0.874, 0.892, 0.884]
    rows = [row("reference", "darts_v2", s, a) for s, a in enumerate(reference)]
    rows += [row("searched", "darts", s, a) for s, a in enumerate(darts)] + [row("searched", "sgblock", s, a) for s, a in enumerate(sgblock)]
    report = render_markdown(rows, spec, len(units))
    assert "| DARTS_V2 (reference) | 88.20 ± 0.20 (n=3) |" in report
    assert "DARTS_V2 retrained with 3 seeds reached 88.20 ± 0.20% (n=3) (range 88.00-88.40%)" in report
    from scipy import stats

    half = stats.t.ppf(0.975, 6) * 0.002 * math.sqrt(0.5)
    assert f"two groups of 4 would reach about ±{100 * half:.2f} points" in report
    pooled = (3 * stats.tvar(darts) + 3 * stats.tvar(sgblock)) / 6
    ratio = pooled / 0.002**2
    assert f"std {100 * math.sqrt(pooled):.2f} points (6 degrees of freedom); variance ratio {ratio:.2f}" in report
    assert stats.f.sf(ratio, 6, 2) > 0.05 and "no more spread than retraining one cell gives" in report
    assert "(DARTS_V2: 88.20 ± 0.20% (n=3))" in report and "References: DARTS_V2 seeds 0, 1, 2." in report


def test_a_resumed_unit_takes_the_comparisons_run_time_settings_not_the_stored_ones(tmp_path, data_root, monkeypatch):
    from darts_sg.experiment import compare as compare_module

    # a search started as under --jobs 2 (threads unset in its config.json), stopped after its first epoch
    first = CompareSpec(spaces=["darts"], seeds=[0], preset="smoke", data_root=str(data_root), search_overrides={"epochs": 1},
                        search_only=True)  # fmt: skip
    run_compare(first, tmp_path, log=lambda m: None)
    assert json.loads((tmp_path / "search" / "darts-s0" / "config.json").read_text())["threads"] == 0
    seen = {}
    monkeypatch.setattr(compare_module, "run_search", lambda config, out, **kw: seen.update(kw))
    later = CompareSpec(**{**first.__dict__, "search_overrides": {"epochs": 2, "threads": 1}, "augment_overrides": {"threads": 1},
                           "search_only": False})  # fmt: skip
    monkeypatch.setattr(compare_module, "run_augment", lambda config, out, **kw: seen.setdefault("augment", kw))
    compare_module.run_unit(later, tmp_path, units_of(later)[0])
    assert seen["resume"] is True and seen["explicit"] == {"threads", "data_root"}  # resumed with one thread
    assert seen["augment"]["explicit"] == {"threads", "data_root"}


def test_report_only_runs_nothing_and_reports_what_finished(tmp_path, data_root):
    spec = CompareSpec(spaces=["darts"], seeds=[0, 1], preset="smoke", data_root=str(data_root))
    out = tmp_path / "cmp"
    run_compare(CompareSpec(spaces=["darts"], seeds=[0], preset="smoke", data_root=str(data_root)), out, log=lambda m: None)
    shutil.rmtree(out / "search" / "darts-s0" / "tensorboard")
    rows = run_compare(spec, out, log=lambda m: None, report_only=True)
    assert rows[0] is not None and rows[1] is None and not (out / "search" / "darts-s1").exists()
    assert "Status: 1 of 2 units finished" in (out / "report.md").read_text()


def test_alpha_figures_are_drawn_again_only_when_their_search_changed(tmp_path):
    """The report is rebuilt after every unit; the first search's alpha figures are redrawn only when its
    alphas.jsonl is newer than them."""
    from darts_sg.experiment.report import alpha_trajectory_pngs

    search = tmp_path / "search" / "darts-s0"
    search.mkdir(parents=True)
    lines = (ROOT / "results" / "compare-medium" / "search" / "darts-s0" / "alphas.jsonl").read_text().splitlines()
    (search / "alphas.jsonl").write_text("\n".join(lines[:2]) + "\n")
    rows = [{"kind": "random", "space": "darts", "name": "darts-random0"}, {"kind": "searched", "space": "darts", "name": "darts-s0"}]
    pngs = alpha_trajectory_pngs(tmp_path, rows, ["darts", "sgblock"])
    assert [p.name for p in pngs] == ["darts-s0_normal.png", "darts-s0_reduce.png"]
    drawn = [p.stat().st_mtime_ns for p in pngs]
    assert alpha_trajectory_pngs(tmp_path, rows, ["darts", "sgblock"]) == pngs
    assert [p.stat().st_mtime_ns for p in pngs] == drawn
    with open(search / "alphas.jsonl", "a") as handle:  # the search went on
        handle.write(lines[2] + "\n")
    alpha_trajectory_pngs(tmp_path, rows, ["darts", "sgblock"])
    assert all(p.stat().st_mtime_ns > t for p, t in zip(pngs, drawn))


def test_units_interleave_references_seeds_and_random_genotypes():
    spec = CompareSpec(spaces=["darts", "sgblock"], seeds=[0, 1, 2], random=2, references=["darts_v2"])
    names = [u.name for u in units_of(spec)]
    assert names == ["darts_v2", "darts-s0", "sgblock-s0", "darts-random0", "sgblock-random0", "darts-s1", "sgblock-s1",
                     "darts-random1", "sgblock-random1", "darts-s2", "sgblock-s2"]  # fmt: skip
    assert Unit("random", "invres", 2).name == "invres-random2"


def test_medium_scale_makes_over_a_thousand_alpha_steps_and_keeps_one_protocol():
    from darts_sg.experiment.compare import search_settings, augment_settings

    spec = CompareSpec.for_preset("medium")
    assert spec.seeds == [0, 1, 2, 3] and spec.random == 3 and spec.references == ["darts_v2"]
    assert spec.spaces == ["darts", "invres", "sgblock"]
    s = SearchConfig(**search_settings(spec))
    s.validate()
    assert s.subset // s.batch_size * s.epochs >= 1000
    t = augment_settings(spec)
    assert (t["layers"], t["init_channels"], t["train_subset"]) == (8, 16, 0)
    assert len(units_of(spec)) == 1 + 3 * 4 + 3 * 3
    # explicit values win over the preset's
    assert CompareSpec.for_preset("medium", seeds=[5], random=None).seeds == [5]


def test_random_genotype_is_uniform_over_the_space_without_none_and_reproducible():
    space = resolve_space("sgblock")
    assert random_genotype(space, 4, seed=3) == random_genotype(space, 4, seed=3)
    assert random_genotype(space, 4, seed=3) != random_genotype(space, 4, seed=4)
    ops, inputs = Counter(), Counter()
    for seed in range(300):
        g = random_genotype(space, 4, seed=seed)
        g.validate(space)
        for cell in (g.normal, g.reduce):
            for node in range(4):
                (_, a), (_, b) = cell[2 * node : 2 * node + 2]
                assert a != b and max(a, b) < node + 2
                inputs[(node, a)] += 1
                inputs[(node, b)] += 1
            ops.update(op for op, _ in cell)
    assert "none" not in ops and set(ops) == set(space) - {"none"}
    # 300 genotypes x 16 edges over 8 ops: each op 600 times expected; a fair draw stays within ±20%
    assert all(480 < n < 720 for n in ops.values()), ops
    # node 3 picks 2 of its 5 inputs: each input 2/5 of 600 = 240 times expected
    assert all(190 < inputs[(3, i)] < 290 for i in range(5))


def test_welch_interval_matches_the_textbook_formula():
    a, b = [93.1, 92.4, 93.8, 92.9], [92.0, 92.6, 91.7]
    result = welch_interval(a, b)
    # Welch: se^2 = s_a^2/n_a + s_b^2/n_b; Satterthwaite df; t quantile from scipy
    from statistics import fmean, variance

    from scipy.stats import t

    va, vb = variance(a) / 4, variance(b) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = fmean(a) - fmean(b)
    assert result["diff"] == pytest.approx(diff)
    assert (result["low"], result["high"]) == (pytest.approx(diff - half), pytest.approx(diff + half))
    assert result["p"] == pytest.approx(2 * t.sf(diff / math.sqrt(va + vb), df))
    assert welch_interval([1.0], [2.0, 3.0]) is None
    # the ratio of geometric means, sqrt(2 * 8) / sqrt(4 * 4.5) - 1 = -5.7%, with the interval of the logs mapped back
    ratio, logs = ratio_interval([2.0, 8.0], [4.0, 4.5]), welch_interval([math.log(2), math.log(8)], [math.log(4), math.log(4.5)])
    assert ratio["diff"] == pytest.approx(math.sqrt(16 / 18) - 1) and ratio["p"] == logs["p"]
    assert (ratio["low"], ratio["high"]) == (pytest.approx(math.expm1(logs["low"])), pytest.approx(math.expm1(logs["high"])))


def test_report_states_the_answer_with_its_interval():
    def row(kind, space, seed, acc, paper_params):
        return {"name": f"{space}-{kind}{seed}", "kind": kind, "space": space, "seed": seed, "test_acc": acc,
                "params": 500_000, "flops": 8e7, "paper_params": paper_params, "paper_flops": 5e8, "sg_block_edges": 0,
                "inv_res_edges": 0, "normal_skips": 1, "search_val_acc": 0.6, "alpha_steps": 1092,
                "stable_since_epoch": 5, "entropy_normal": 2.0, "entropy_reduce": 2.1, "search_seconds": 900.0,
                "train_seconds": 1500.0}  # fmt: skip

    rows = [row("searched", "darts", s, 0.880 + 0.002 * s, 3.3e6) for s in range(3)]
    rows += [row("searched", "sgblock", s, 0.881 + 0.002 * s, 2.5e6) for s in range(3)]
    rows += [row("random", "sgblock", s, 0.870 + 0.004 * s, 2.8e6) for s in range(3)]
    report = render_markdown(rows, CompareSpec(spaces=["darts", "sgblock"], seeds=[0, 1, 2], preset="medium", random=3), 20)
    assert "`sgblock` vs `darts`, searched cells: +0.10 points" in report and "contains 0: no difference" in report
    assert "`sgblock`, searched vs random cells: +0.90 points, 95% CI [+0.07, +1.73]: higher" in report
    assert ("`sgblock` searched cells 2.50 ± 0.00 M (n=3) vs `darts` 3.30 ± 0.00 M (n=3): -24% [-24%, -24%], p<0.001 "
            "(the paper: about -25%; the ratio of the groups' geometric means") in report
    assert "Status: 9 of 20 units finished" in report and "= 1092 alpha steps" in report
    # how firmly the searches chose: mean entropy share ((2.0 + 2.1) / 2 / ln 8 = 98.6%), none changed in its last epoch
    assert "`darts` 98.6% (n=3), `sgblock` 93.3% (n=3); 0 of 6 searches changed" in report
    assert "The alphas stayed close to uniform" in report
    assert "retrained for 10 epochs at C=16, 8 cells, not the paper's 600 epochs" in report
    rows[0]["stable_since_epoch"] = rows[1]["stable_since_epoch"] = 7  # the medium search's last epoch
    for r in rows:
        r["entropy_normal"] = r["entropy_reduce"] = 1.0
    report = render_markdown(rows, CompareSpec(spaces=["darts", "sgblock"], seeds=[0, 1, 2], preset="medium", random=3), 20)
    assert "2 of 6 searches changed" in report and "moved well away from uniform and most genotypes had settled" in report
    assert "| darts-searched0 | 88.00% |" in report and "| not recorded |" in report
    # the paper's -25% is the sandglass space's; of the inverted-residual space's parameters it says nothing
    rows += [row("searched", "invres", s, 0.885 + 0.001 * s, 4.0e6) for s in range(3)]
    report = render_markdown(rows, CompareSpec(spaces=["darts", "invres", "sgblock"], seeds=[0, 1, 2], preset="medium", random=3), 30)
    assert "`invres` searched cells 4.00 ± 0.00 M (n=3) vs `darts` 3.30 ± 0.00 M (n=3): +21% [+21%, +21%], p<0.001 (the paper gives no parameter figure for the inverted-residual space;" in report
    assert "- Size:" not in report  # every row has the same params: nothing to correlate


def test_a_small_p_value_is_printed_to_its_first_significant_digit_never_as_zero():
    assert [_p_value(p) for p in (0.49, 0.0501, 0.0042, 0.00019)] == ["p=0.49", "p=0.05", "p=0.004", "p<0.001"]


def test_a_group_reads_mean_and_std_with_its_size_and_one_value_reads_alone():
    assert mean_pm([0.881, 0.883], 100, unit="%") == "88.20 ± 0.14% (n=2)"
    assert mean_pm([3.6e6, 4.0e6], 1e-6, 1, " M", count=False) == "3.8 ± 0.3 M"
    assert mean_pm([0.8812], 100, unit="%") == "88.12%" and mean_pm([]) == "–"


def test_report_says_whether_bigger_cells_reached_higher_accuracy():
    rows = [{"name": f"u{i}", "kind": "searched", "space": "darts", "test_acc": acc, "params": params}
            for i, (params, acc) in enumerate([(2e5, 0.870), (3e5, 0.874), (4e5, 0.879), (5e5, 0.881), (6e5, 0.890)])]
    found = size_association(rows)
    assert found == {"rho": pytest.approx(1.0), "p": pytest.approx(0.0, abs=1e-6), "n": 5}
    assert "Spearman rank correlation +1.00, p<0.001: the bigger cells reached higher accuracy" in "\n".join(_size_effect(rows))
    rows[0]["test_acc"], rows[4]["test_acc"] = 0.890, 0.870  # the ranks no longer agree
    found = size_association(rows)
    assert found["rho"] == pytest.approx(1 - 6 * (16 + 16) / (5 * 24)) and found["p"] > 0.05  # accuracy ranks 5,2,3,4,1
    assert "no link between size and accuracy this experiment can detect" in "\n".join(_size_effect(rows))
    for r, acc in zip(rows, [0.890, 0.881, 0.879, 0.874, 0.870]):
        r["test_acc"] = acc
    line = "\n".join(_size_effect(rows))
    assert "+1.00" not in line and "the bigger cells reached lower accuracy" in line
    assert size_association(rows[:3]) is None


def test_equal_size_fit_separates_a_space_that_wins_by_size_from_one_that_wins_by_structure():
    # accuracy = 0.85 + 0.012 per doubling of params + 0.005 for sgblock's structure + 0.003 for searching, plus a
    # small deterministic wobble; invres cells are twice the size and gain nothing else
    truth = {"darts": 0.0, "invres": 0.0, "sgblock": 0.005}
    wobble = [0.0004, -0.0003, 0.0002, -0.0004, 0.0001, -0.0002, 0.0003, 0.0]
    rows, i = [], 0
    for space, base in (("darts", 3e5), ("invres", 6e5), ("sgblock", 3e5)):
        for kind in ("searched", "random"):
            for scale in (0.8, 1.0, 1.25, 1.6):
                params = base * scale * (1.1 if kind == "searched" else 1.0)
                acc = 0.85 + 0.012 * math.log2(params / 3e5) + truth[space] + 0.003 * (kind == "searched") + wobble[i % 8]
                rows.append({"name": f"{space}-{kind}{scale}", "kind": kind, "space": space, "test_acc": acc, "params": params})
                i += 1
    rows.append({"name": "darts_v2", "kind": "reference", "space": "darts", "test_acc": 0.99, "params": 1e5})  # left out
    found = size_adjusted_differences(rows, ["darts", "invres", "sgblock"])
    assert found["n"] == 24
    assert found["per_doubling"]["diff"] == pytest.approx(0.012, abs=1e-3)
    assert found["searched"]["diff"] == pytest.approx(0.003, abs=1e-3)
    for space, effect in truth.items():
        if space != "darts":
            got = found["spaces"][space]
            assert got["diff"] == pytest.approx(effect, abs=1e-3) and got["low"] < effect < got["high"]
    # the raw comparison credits invres with its size; the fit does not
    acc = lambda space: [r["test_acc"] for r in rows if r["space"] == space and r["kind"] == "searched"]  # noqa: E731
    assert welch_interval(acc("invres"), acc("darts"))["low"] > 0
    lines = "\n".join(_at_equal_size(rows, ["darts", "invres", "sgblock"]))
    assert "`invres` vs `darts` at equal size: " in lines and "contains 0" in lines.split("\n")[0]
    assert "`sgblock` vs `darts` at equal size: +0.50 points" in lines and "higher, beyond" in lines.split("\n")[1]
    assert "over the 24 searched and random units" in lines
    png = accuracy_vs_params_png(rows, ["darts", "invres", "sgblock"])  # renders with the fit drawn (checked: a whole PNG)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (720, 480)
    # what cannot identify the fit: no darts units, only searched units, or no residual degrees of freedom
    assert size_adjusted_differences([r for r in rows if r["space"] != "darts"], ["darts", "invres", "sgblock"]) is None
    assert size_adjusted_differences([r for r in rows if r["kind"] == "searched"], ["darts", "invres", "sgblock"]) is None
    assert size_adjusted_differences(rows[:2] + rows[4:5] + rows[8:9] + rows[12:13], ["darts", "invres"]) is None
    assert _at_equal_size(rows[:3], ["darts"]) == []


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["epochs=3", "w-lr=0.1", "channels_last=false"], SearchConfig) == {
        "epochs": 3, "w_lr": 0.1, "channels_last": False,
    }  # fmt: skip
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["nonsense=1"], SearchConfig)
    with pytest.raises(UserError, match="not a valid"):
        parse_overrides(["epochs=many"], SearchConfig)


def test_quick_comparison_scale_and_overrides():
    from darts_sg.experiment.compare import search_settings, augment_settings

    spec = CompareSpec(spaces=["darts"], seeds=[0], preset="quick")
    assert (search_settings(spec)["epochs"], search_settings(spec)["subset"], search_settings(spec)["layers"]) == (4, 640, 5)
    assert (augment_settings(spec)["epochs"], augment_settings(spec)["train_subset"]) == (2, 6000)
    spec.search_overrides = {"epochs": 7}
    assert search_settings(spec)["epochs"] == 7
    assert set(COMPARE_SCALES) == {"paper", "medium", "quick", "smoke"}


def test_resuming_with_other_settings_is_refused(tmp_path):
    stored = {"spaces": ["darts"], "seeds": [0], "preset": "quick", "search_overrides": {"epochs": 5}, "augment_overrides": {},
              "search": {"epochs": 5, "subset": 640}, "augment": {"epochs": 2}}  # fmt: skip
    (tmp_path / "compare.json").write_text(json.dumps(stored))
    with pytest.raises(UserError, match=r"other search settings \(.*epochs"):
        run_compare(CompareSpec(spaces=["darts"], seeds=[0], preset="quick"), tmp_path, log=lambda m: None)
    assert json.loads((tmp_path / "compare.json").read_text()) == stored  # left as it was


def test_settings_are_checked_against_what_the_folder_recorded_not_todays_presets(tmp_path):
    """A folder whose recorded settings differ from what the same command gives today (say, a preset changed in
    the code since) is refused, although its stored command line is the same."""
    from darts_sg.experiment.compare import search_settings, augment_settings

    spec = CompareSpec(spaces=["darts"], seeds=[0], preset="quick")
    recorded = {"spaces": ["darts"], "seeds": [0], "preset": "quick", "search_overrides": {}, "augment_overrides": {},
                "search": {**search_settings(spec), "alpha_lr": 1e-3}, "augment": augment_settings(spec)}  # fmt: skip
    (tmp_path / "compare.json").write_text(json.dumps(recorded))
    with pytest.raises(UserError, match=r"other search settings \(alpha_lr\)"):
        run_compare(spec, tmp_path, log=lambda m: None)
    # run-time settings (threads, per-epoch figures) may differ, as they may when a single run is resumed
    recorded["search"] = {**search_settings(spec), "figures": False, "threads": 1}
    (tmp_path / "compare.json").write_text(json.dumps(recorded))
    assert run_compare(spec, tmp_path, log=lambda m: None, report_only=True) == [None]


def test_recorded_alpha_entropy_is_the_mean_over_edges_to_six_decimals():
    from darts_sg.experiment.report import _entropy

    assert _entropy([[0.5, 0.5], [1.0, 0.0]]) == round(math.log(2) / 2, 6)  # the mean over edges, to 6 decimals


def test_the_report_draws_accuracy_against_cost_with_the_pareto_front():
    from darts_sg.experiment.report import accuracy_vs_cost_png, pareto_front

    def row(name, kind, space, acc, params, latency=None):
        return {"name": name, "kind": kind, "space": space, "seed": 0, "test_acc": acc, "params": params, "flops": 2 * params,
                "paper_params": 10 * params, "paper_flops": 20 * params, "sg_block_edges": 0, "inv_res_edges": 0,
                "normal_skips": 1, "search_val_acc": 0.6, "alpha_steps": 10, "stable_since_epoch": 1, "entropy_normal": 2.0,
                "entropy_reduce": 2.0, "search_seconds": 1.0, "train_seconds": 1.0, "latency_ms": latency}  # fmt: skip

    rows = [row("a", "searched", "darts", 0.80, 100), row("b", "searched", "darts", 0.85, 200),
            row("c", "random", "darts", 0.84, 300),  # dominated by b: dearer and less accurate
            row("d", "searched", "sgblock", 0.85, 250),  # as accurate as b, dearer: dominated
            row("e", "reference", "darts_v2", 0.90, 400), row("f", "random", "sgblock", 0.80, 100)]  # f ties a: both stay
    assert [r["name"] for r in pareto_front(rows, "params")] == ["a", "f", "b", "e"]
    assert pareto_front(rows, "latency_ms") == []  # no unit measured it
    assert accuracy_vs_cost_png(rows, "params").startswith(b"\x89PNG") and accuracy_vs_cost_png([], "latency").startswith(b"\x89PNG")
    spec = CompareSpec(spaces=["darts", "sgblock"], seeds=[0], preset="quick", search_overrides={"cost": "flops", "cost_target": 5.0})
    report = render_markdown(rows, spec, 6)
    assert "Under a budget: --cost flops, weight 0.1, target 5 MFLOPs" in report
    section = report.split("## Accuracy against cost", 1)[1]
    assert "FLOPs per image" in section and "| b | 0.000400 | 85.00% |" in section and "| c |" not in section
    assert "![test accuracy against cost](accuracy_vs_cost.png)" in section


def test_compare_passes_the_cost_options_to_every_search_and_records_them(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from darts_sg import cli as cli_module

    seen = {}
    monkeypatch.setattr("darts_sg.experiment.compare.run_compare", lambda spec, out, **kw: seen.setdefault("spec", spec) and [])
    result = CliRunner().invoke(cli_module.cli, ["compare", "--spaces", "darts", "--seeds", "0", "--preset", "smoke", "--out",
                                                 str(tmp_path), "--cost", "params", "--cost-target", "2.5", "--search-opt", "epochs=2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    from darts_sg.experiment.plan import search_config

    config = search_config(seen["spec"], "darts", 0)
    assert (config.cost, config.cost_target, config.cost_weight, config.epochs) == ("params", 2.5, 0.1, 2)
    from darts_sg.experiment.compare import prepare_experiment

    prepare_experiment(seen["spec"], tmp_path)  # the plan records them: a later run with another budget is refused
    assert json.loads((tmp_path / "compare.json").read_text())["search"]["cost_target"] == 2.5
    seen["spec"].search_overrides["cost_target"] = 3.0
    with pytest.raises(UserError, match=r"other search settings \(cost_target\)"):
        prepare_experiment(seen["spec"], tmp_path)


def test_the_compute_line_names_the_hours_the_retrained_units_spent_and_no_empty_kind():
    search_only = _compute_line([], {"gpu_hours": 0.0, "cpu_hours": 4.7})
    assert search_only[-1].startswith("Compute so far: 4.7 CPU process-hours") and "GPU" not in search_only[-1]
    assert "retrained" not in search_only[-1]
    retrained = _compute_line([{"cpu_hours": 2.5, "gpu_hours": 0.0}], {"gpu_hours": 1.0, "cpu_hours": 4.0})
    assert "1.0 GPU-hours and 4.0 CPU process-hours" in retrained[-1]
    assert "the retrained units: 2.5 CPU process-hours)" in retrained[-1]
    assert _compute_line([], {"gpu_hours": 0.0, "cpu_hours": 0.0}) == []
