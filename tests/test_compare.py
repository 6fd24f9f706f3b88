import json
import struct

from darts_sg.compare import CompareSpec, parse_overrides, run_compare
from darts_sg.search import SearchConfig


def test_compare_smoke_runs_reports_and_resumes(tmp_path, data_root):
    spec = CompareSpec(spaces=["darts", "sgblock"], seeds=[0], preset="smoke", data_root=str(data_root))
    out = tmp_path / "cmp"
    rows = run_compare(spec, out, log=lambda m: None)
    assert [(r["space"], r["seed"]) for r in rows] == [("darts", 0), ("sgblock", 0)]
    for name in ("report.md", "rows.json", "rows.csv", "accuracy_vs_params.png"):
        assert (out / name).exists()
    png = (out / "accuracy_vs_params.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (720, 480)
    report = (out / "report.md").read_text()
    assert "| darts | 0 |" in report and "| sgblock | 0 |" in report and "mean ± std" in report
    assert rows[0]["inv_res_edges"] == 0
    assert len((out / "rows.csv").read_text().splitlines()) == 3
    # a second call finds both pairs finished and runs nothing again
    before = (out / "augment" / "darts-s0" / "checkpoint.pt").stat().st_mtime_ns
    messages = []
    run_compare(spec, out, log=messages.append)
    assert all("finished earlier" in m for m in messages)
    assert (out / "augment" / "darts-s0" / "checkpoint.pt").stat().st_mtime_ns == before
    assert json.loads((out / "rows.json").read_text()) == rows


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["epochs=3", "w-lr=0.1", "channels_last=false"], SearchConfig) == {
        "epochs": 3, "w_lr": 0.1, "channels_last": False,
    }  # fmt: skip
    import pytest

    from darts_sg.errors import UserError

    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["nonsense=1"], SearchConfig)
    with pytest.raises(UserError, match="not a valid"):
        parse_overrides(["epochs=many"], SearchConfig)


def test_report_compares_each_space_with_darts():
    from darts_sg.compare import render_markdown

    def row(space, seed, params, test_acc):
        return {"space": space, "seed": seed, "search_val_acc": 0.3, "params": params, "flops": 5e7, "test_acc": test_acc,
                "search_seconds": 60.0, "train_seconds": 60.0, "sg_block_edges": 0, "inv_res_edges": 0}  # fmt: skip

    rows = [row("darts", 0, 1_000_000, 0.50), row("darts", 1, 1_000_000, 0.54), row("sgblock", 0, 750_000, 0.54)]
    report = render_markdown(rows, CompareSpec(spaces=["darts", "sgblock"], seeds=[0, 1], preset="smoke"))
    assert "| darts | 2 | 30.00 ± 0.00% | 1.000 ± 0.000 M | 50.0 ± 0.0 | 52.00 ± 2.83% | +0.0% | +0.00 points |" in report
    assert "| sgblock | 1 |" in report and "| -25.0% | +2.00 points |" in report


def test_quick_comparison_scale_and_overrides():
    from darts_sg.compare import search_settings, train_settings

    spec = CompareSpec(spaces=["darts"], seeds=[0], preset="quick")
    assert (search_settings(spec)["epochs"], search_settings(spec)["subset"], search_settings(spec)["layers"]) == (4, 640, 5)
    assert (train_settings(spec)["epochs"], train_settings(spec)["train_subset"]) == (2, 6000)
    spec.search_overrides = {"epochs": 7}
    assert search_settings(spec)["epochs"] == 7


def test_resuming_with_other_settings_is_refused(tmp_path):
    import pytest

    from darts_sg.errors import UserError

    stored = {"spaces": ["darts"], "seeds": [0], "preset": "quick", "search_overrides": {"epochs": 5}, "train_overrides": {}}
    (tmp_path / "compare.json").write_text(json.dumps(stored))
    with pytest.raises(UserError, match=r"other search settings \(epochs\)"):
        run_compare(CompareSpec(spaces=["darts"], seeds=[0], preset="quick"), tmp_path, log=lambda m: None)
    assert json.loads((tmp_path / "compare.json").read_text()) == stored  # left as it was
