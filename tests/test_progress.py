import io
import re
import subprocess
import sys
from pathlib import Path

from darts_sg.train.engine import EpochTotals, fit
from darts_sg.train.progress import Progress
from darts_sg.train.rundir import RunDirectory

from fake_job import CountingJob

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """A fake clock advanced by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def totals_after(steps: int) -> EpochTotals:
    totals = EpochTotals()
    for _ in range(steps):
        totals.add({"loss": 2.0, "acc": 0.25}, 32, 4.0)
    return totals


def drive(progress: Progress, clock: Clock, epochs: int, steps: int, seconds_per_step: float) -> None:
    for epoch in range(epochs):
        progress.begin_epoch(epoch, 0)
        for step in range(1, steps + 1):
            clock.now += seconds_per_step
            progress.update(step, totals_after(step))
        progress.end_epoch()


def test_off_a_terminal_a_line_every_interval_with_stats_and_both_etas():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(epochs=2, steps_per_epoch=4, start_epoch=0, start_step=0, log_every=10, stream=stream, clock=clock)
    drive(progress, clock, epochs=2, steps=4, seconds_per_step=4.0)
    lines = stream.getvalue().splitlines()
    # 4 s per step and a line when 10 s have passed since the last one (or the epoch start): steps 3 and 3 of each epoch.
    assert [re.match(r"epoch (\d)/2 step (\d)/4", line).groups() for line in lines] == [("1", "3"), ("2", "3")]
    first = lines[0]
    assert "loss 2.000" in first and "acc 0.250" in first and "8.0 img/s" in first
    assert "epoch ETA 0:00:04" in first  # one step left at 4 s
    assert "run ETA 0:00:20" in first  # five steps left at 4 s
    assert "run ETA 0:00:04" in lines[1]


def test_interval_zero_prints_every_step_and_a_resumed_run_counts_only_what_is_left():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(epochs=3, steps_per_epoch=4, start_epoch=1, start_step=2, log_every=0, stream=stream, clock=clock)
    progress.begin_epoch(1, 2)
    clock.now += 10.0
    progress.update(3, totals_after(3))
    line = stream.getvalue().strip()
    assert line.startswith("epoch 2/3 step 3/4") and "run ETA 0:00:50" in line  # 5 steps left at 10 s per step


def test_disabled_progress_prints_nothing():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(2, 4, 0, 0, enabled=False, log_every=0, stream=stream, clock=clock)
    drive(progress, clock, epochs=2, steps=4, seconds_per_step=4.0)
    assert stream.getvalue() == ""


def test_on_a_terminal_the_bar_shows_the_run_eta_and_no_lines():
    clock, stream = Clock(), TTY()
    progress = Progress(2, 4, 0, 0, log_every=0, stream=stream, clock=clock)
    drive(progress, clock, epochs=2, steps=4, seconds_per_step=4.0)
    text = stream.getvalue()
    assert "epoch 1/2" in text and "run ETA 0:00:" in text
    assert not re.search(r"step \d/4", text)


def test_fit_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    fit(CountingJob(steps=3, acc=0.5), RunDirectory(tmp_path), epochs=2, log_every=0)
    err = capsys.readouterr().err.splitlines()
    steps = [line.split(" | ")[0] for line in err if " step " in line]
    assert steps == [f"epoch {e}/2 step {s}/3" for e in (1, 2) for s in (1, 2, 3)]
    assert all("loss 1.500 | acc 0.500" in line for line in err if " step " in line)


def test_log_every_is_a_documented_option():
    for script in ("search.py", "augment.py"):
        result = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60)
        assert "--log-every SECONDS" in result.stdout and "Off a terminal" in result.stdout
