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
