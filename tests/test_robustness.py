"""Kill, signal and bad-input behaviour: a run survives being killed and refuses bad input cleanly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from darts_sg.train.engine import NonFiniteLoss, fit
from darts_sg.utils.io import load_checkpoint
from darts_sg.train.rundir import RunDirectory

from fake_job import CountingJob

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ["search.py", "--preset", "smoke", "--epochs", "2", "--subset", "128", "--batch-size", "32",
          "--checkpoint-every", "1", "--deterministic", "--no-progress"]  # fmt: skip
AUGMENT = ["augment.py", "--preset", "smoke", "--genotype", "darts_v2", "--epochs", "2", "--train-subset", "128",
           "--checkpoint-every", "1", "--deterministic", "--no-progress"]  # fmt: skip


def start(args, data_root, out):
    cmd = [sys.executable, str(ROOT / args[0]), *args[1:], "--data-root", str(data_root), "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(args, data_root, out):
    proc = start(args, data_root, out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return stdout, stderr


def resume(args, data_root, out):
    cmd = [sys.executable, str(ROOT / args[0]), "--resume", str(out), "--data-root", str(data_root), "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def wait_for_checkpoint(proc, path: Path, epoch: int, step: int, timeout=240):
    """Poll the (atomically written) checkpoint until it reaches (epoch, step)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before the kill point"
        if path.exists():
            state = load_checkpoint(path)
            if (state["epoch"], state["step"]) >= (epoch, step):
                return
        time.sleep(0.05)
    raise AssertionError("kill point not reached")


def final_state(out: Path):
    state = load_checkpoint(out / "checkpoint.pt")
    metrics = [
        {k: v for k, v in json.loads(line).items() if "seconds" not in k and "per_s" not in k}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    return state["job"]["model"], metrics


def assert_identical(a: Path, b: Path):
    model_a, metrics_a = final_state(a)
    model_b, metrics_b = final_state(b)
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    assert metrics_a == metrics_b


# the tests that use the uninterrupted runs share one pytest-xdist worker, which makes them once (scripts/test.sh)
on_the_straight_runs_worker = pytest.mark.xdist_group("robustness-straight-runs")


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, data_root):
    base = tmp_path_factory.mktemp("straight")
    run(SEARCH, data_root, base / "search")
    run(AUGMENT, data_root, base / "augment")
    return base


@on_the_straight_runs_worker
@pytest.mark.parametrize(
    "args, name, kill_at, sig",
    [
        (SEARCH, "search", (0, 2), signal.SIGKILL),
        (SEARCH, "search", (1, 3), signal.SIGKILL),
        (AUGMENT, "augment", (0, 1), signal.SIGKILL),
        (AUGMENT, "augment", (1, 2), signal.SIGKILL),
        (SEARCH, "search", (0, 1), signal.SIGTERM),
    ],
)
def test_killed_run_resumes_bit_identical(tmp_path, data_root, straight_runs, args, name, kill_at, sig):
    out = tmp_path / name
    proc = start(args, data_root, out)
    wait_for_checkpoint(proc, out / "checkpoint.pt", *kill_at)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # graceful: finish the step, checkpoint, say how to resume, exit 128 + signal
        assert proc.returncode == 128 + sig, stderr
        assert f"--resume {out}" in stderr.strip().splitlines()[-1]
    load_checkpoint(out / "checkpoint.pt")  # still loadable
    resume(args, data_root, out)
    assert_identical(straight_runs / name, out)
    if name == "search":
        assert (out / "genotype.json").read_text() == (straight_runs / name / "genotype.json").read_text()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    run_dir = RunDirectory(tmp_path)
    nan_at_third_step = CountingJob(steps=4, loss_at=lambda step: float("nan") if step == 2 else 1.0)
    with pytest.raises(NonFiniteLoss, match="epoch 1, step 3"):
        fit(nan_at_third_step, run_dir, epochs=1, checkpoint_every=1, progress=False)
    state = load_checkpoint(run_dir.checkpoint_path)
    assert state["step"] == 2 and state["job"]["weight"].item() == 2


def one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def cli(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_unwritable_output_directory(tmp_path, data_root):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(cli("search.py", "--preset", "smoke", "--out", str(blocker / "run"), "--data-root", str(data_root)),
                   "cannot write to output directory")  # fmt: skip


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A copy of a finished run, to spoil."""
    return Path(shutil.copytree(run, tmp_path / run.name))


@on_the_straight_runs_worker
def test_checkpoint_from_another_space_is_refused(tmp_path, data_root, straight_runs):
    darts_run, sg_run = tmp_path / "darts", copy_of(straight_runs / "search", tmp_path)  # search.py's default: sgblock
    result = cli("search.py", "--preset", "smoke", "--ops", "darts", "--out", str(darts_run), "--data-root", str(data_root))
    assert result.returncode == 0, result.stderr
    # put the darts run's mid-epoch state in the sgblock run, as a mix-up of files would
    state = load_checkpoint(darts_run / "checkpoint.pt")
    state["epoch"], state["step"] = 0, 1
    torch.save(state, sg_run / "checkpoint.pt")
    before = (sg_run / "checkpoint.pt").read_bytes()
    one_line_error(cli("search.py", "--resume", str(sg_run), "--data-root", str(data_root)), "resume it with its own --ops")
    assert (sg_run / "checkpoint.pt").read_bytes() == before


def test_tampered_data_is_refused(tmp_path, data_root):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in os.listdir(data_root / "cifar-10-batches-py"):
        os.symlink(data_root / "cifar-10-batches-py" / name, folder / name)
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    one_line_error(cli("search.py", "--preset", "smoke", "--out", str(tmp_path / "r"), "--data-root", str(tmp_path / "data")),
                   "refusing to load posix.system")  # fmt: skip
    assert not (tmp_path / "pwned").exists()


@on_the_straight_runs_worker
def test_truncated_checkpoint_is_refused(tmp_path, data_root, straight_runs):
    out = copy_of(straight_runs / "search", tmp_path)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    one_line_error(cli("search.py", "--resume", str(out), "--data-root", str(data_root)), "cannot be loaded safely")
