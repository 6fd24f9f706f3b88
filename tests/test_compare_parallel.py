"""`darts-sg compare --jobs N`: units claimed by one process at a time, stopped and resumed cleanly."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from darts_sg.experiment.compare import Unit
from darts_sg.experiment.parallel import unit_claim
from darts_sg.utils.io import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_a_claimed_unit_is_refused_to_others_and_freed_when_its_holder_dies(tmp_path):
    unit = Unit("searched", "darts", 0)
    with unit_claim(tmp_path, unit) as first:
        with unit_claim(tmp_path, unit) as second:
            assert first and not second
        with unit_claim(tmp_path, Unit("searched", "darts", 1)) as other:
            assert other
    with unit_claim(tmp_path, unit) as again:
        assert again
    # a process that dies holding the claim (SIGKILL: no clean-up of its own) leaves the unit free
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom darts_sg.experiment.compare import Unit\n"
         "from darts_sg.experiment.parallel import unit_claim\n"
         f"with unit_claim(Path({str(tmp_path)!r}), Unit('searched', 'darts', 0)) as held:\n"
         "    print(held, flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "True"
        with unit_claim(tmp_path, unit) as while_held:
            assert not while_held
    finally:
        holder.kill()
        holder.wait()
    with unit_claim(tmp_path, unit) as after_kill:
        assert after_kill


def test_two_jobs_stop_on_sigterm_with_checkpoints_and_resume_to_the_end(tmp_path, data_root):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "darts_sg", "compare", "--preset", "smoke", "--spaces", "darts", "--seeds", "0",
           "--random", "1", "--references", "", "--search-opt", "epochs=3", "--jobs", "2", "--data-root", str(data_root),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    search_checkpoint = out / "search" / "darts-s0" / "checkpoint.pt"
    deadline = time.time() + 240
    while not search_checkpoint.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert re.search(r"^\[worker [12]\] compare: unit 1/2 darts-s0: search and retrain$", stderr, re.M), stderr
    assert "stopped by a signal" in stderr.strip().splitlines()[-1]
    assert load_checkpoint(search_checkpoint)["epoch"] < 3  # stopped inside the search, which saved its place
    assert not (out / "augment" / "darts-s0").exists()

    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "rows.json").read_text())
    assert [r["name"] for r in rows] == ["darts-s0", "darts-random0"]
    assert all(r["machines"].endswith(", 1 thread") for r in rows), [r["machines"] for r in rows]
    metrics = [json.loads(line) for line in (out / "search" / "darts-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 4))  # resumed where it stopped, no epoch twice
    assert "Status: 2 of 2 units finished" in (out / "report.md").read_text()
