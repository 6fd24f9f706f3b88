"""torchrun with 2 CPU processes (gloo): identical alphas on every rank, agreement with 1 process, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from darts_sg.utils.io import load_checkpoint

from test_search_cli import smoke_config

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--preset", "smoke", "--subset", "128", "--batch-size", "32", "--epochs", "1", "--no-progress", "--threads", "1"]


def torchrun(*args, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_two_processes_match_one_and_agree_on_alphas(tmp_path, data_root):
    from darts_sg.jobs.search import run_search

    two, one = tmp_path / "two", tmp_path / "one"
    env_args = ["--data-root", str(data_root)]
    result = torchrun("search.py", *ARGS, *env_args, "--out", str(two))
    assert result.returncode == 0, result.stderr[-3000:]
    # the same settings as ARGS, in this (single, not distributed) process
    run_search(smoke_config(data_root, subset=128, batch_size=32, epochs=1), one, progress=False)
    # every rank ended each epoch with bit-identical alphas (checked across ranks by the job)
    metrics = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert all(m["alphas_identical_across_ranks"] for m in metrics)
    # only rank 0 wrote the run's files
    assert len(list((two / "tensorboard").glob("events.*"))) == 1
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 1
    # 2 processes with the global batch of 32 against 1 process with 32: the same up to batch-norm
    # statistics, which each process computes on its own 16 images.
    alphas_two = load_checkpoint(two / "checkpoint.pt")["job"]["model"]
    alphas_one = load_checkpoint(one / "checkpoint.pt")["job"]["model"]
    for key in ("alpha_normal", "alpha_reduce"):
        assert (alphas_two[key] - alphas_one[key]).abs().max() < 2e-3
    # and resuming under torchrun works
    config = json.loads((two / "config.json").read_text())
    config["epochs"] = 2
    (two / "config.json").write_text(json.dumps(config))
    result = torchrun("search.py", "--resume", str(two), *env_args, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2


def test_second_order_search_under_torchrun_keeps_the_ranks_in_step(tmp_path, data_root):
    """The unrolled step under 2 processes: every rank ends with the same alphas, close to one process's."""
    from darts_sg.jobs.search import run_search

    two, one = tmp_path / "two", tmp_path / "one"
    result = torchrun("search.py", *ARGS, "--order", "2", "--data-root", str(data_root), "--out", str(two))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert all(m["alphas_identical_across_ranks"] for m in metrics)
    run_search(smoke_config(data_root, subset=128, batch_size=32, epochs=1, order=2), one, progress=False)
    alphas_two = load_checkpoint(two / "checkpoint.pt")["job"]["model"]
    alphas_one = load_checkpoint(one / "checkpoint.pt")["job"]["model"]
    for key in ("alpha_normal", "alpha_reduce"):  # batch-norm statistics per process, as in the first-order test
        assert (alphas_two[key] - alphas_one[key]).abs().max() < 2e-3


def test_a_dying_rank_stops_the_job(tmp_path, data_root):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "search.py", *ARGS,
           "--epochs", "20", "--data-root", str(data_root), "--out", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "r" / "metrics.jsonl").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [int(pid) for pid in children]
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)  # must not hang
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "failed" in stderr.lower() or "error" in stderr.lower()


class _CollectiveSeen(Exception):
    pass


def _record_collectives(monkeypatch):
    """Pretend to be one of 2 processes; record the device of every tensor handed to a collective, then stop."""
    import torch.distributed as dist

    seen = []

    def collective(*tensors):
        for t in tensors:
            seen.extend(x.device.type for x in (t if isinstance(t, list) else [t]))
        raise _CollectiveSeen

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: collective(t))
    monkeypatch.setattr(dist, "all_gather", lambda out, t, *a, **k: collective(out, t))
    return seen


def test_collectives_get_tensors_on_the_models_device(monkeypatch):
    """NCCL accepts only device tensors: evaluation sums and the alpha check must not move to the CPU.
    `meta` stands in for a non-CPU device (shapes only); a `.cpu()` or `.item()` on the way would fail."""
    import pytest
    import torch

    from darts_sg.utils.distributed import identical_across_ranks
    from darts_sg.train.engine import evaluate

    class Loader:
        def iterate(self, epoch):
            yield torch.empty(4, 3, 8, 8, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).to("meta")
    seen = _record_collectives(monkeypatch)
    with pytest.raises(_CollectiveSeen):
        evaluate(model, Loader())
    with pytest.raises(_CollectiveSeen):
        identical_across_ranks([torch.empty(14, 9, device="meta"), torch.empty(14, 9, device="meta")])
    assert seen and set(seen) == {"meta"}


STOP_WORKER = """
import json, os, signal, sys
import torch
import torch.distributed as dist
from darts_sg.utils.distributed import leave_process_group
from darts_sg.train.engine import Interrupted, fit
from darts_sg.train.rundir import RunDirectory

dist.init_process_group("gloo")
rank = dist.get_rank()


class Job:
    kind = "test"

    def steps_per_epoch(self):
        return 50

    def batches(self, epoch, start_step):
        return iter(range(start_step, 50))

    def begin_epoch(self, epoch):
        pass

    def train_step(self, step):
        if rank == 1 and step == 4:  # only this process is signalled, in its fifth step
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": torch.tensor(1.0), "count": torch.tensor(1)}

    def end_epoch(self, epoch):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def tensorboard(self, writer, epoch, metrics):
        pass


try:
    fit(Job(), RunDirectory(sys.argv[1]), epochs=1, progress=False)
    outcome = "finished"
except Interrupted as stop:
    outcome = str(stop)
with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as f:
    f.write(outcome)
leave_process_group()  # as the command line does after a job
"""


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """SIGTERM reaches the ranks of a torchrun job at different steps; they agree through a collective
    and all stop after the same step, and one checkpoint of that step is written."""
    script = tmp_path / "worker.py"
    script.write_text(STOP_WORKER)
    run = tmp_path / "run"
    run.mkdir()
    result = torchrun(str(script), str(run), timeout=120)
    assert result.returncode == 0, result.stderr
    outcomes = [(run / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert all("stopped on signal SIGTERM at epoch 1, step 6;" in text for text in outcomes), outcomes
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6
