"""The comparison on a cluster: units listed and run one by one, workers spread over GPUs, Slurm jobs via submitit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from darts_sg.cli import cli
from darts_sg.experiment.compare import CompareSpec, find_unit, prepare_experiment, run_named_unit, unit_states, units_of
from darts_sg.experiment.parallel import run_in_parallel, unit_claim, visible_gpus, worker_gpus
from darts_sg.experiment.report import compute_hours, render_markdown
from darts_sg.experiment.slurm import parse_time
from darts_sg.utils.errors import UserError
from darts_sg.train.rundir import RunDirectory

ROOT = Path(__file__).resolve().parents[1]
# two random genotypes of the darts space at the smoke scale: the cheapest units (no search)
TWO_UNITS = ["--preset", "smoke", "--spaces", "darts", "--seeds", "", "--random", "2", "--references", ""]


def two_units(data_root=None) -> CompareSpec:
    return CompareSpec.for_preset("smoke", spaces=["darts"], seeds=[], random=2, references=[], data_root=data_root)


def test_workers_go_one_per_gpu_by_default_k_per_gpu_or_dealt_out_in_turn():
    assert worker_gpus(None, None, []) == [None]
    assert worker_gpus(3, None, []) == [None, None, None]
    assert worker_gpus(None, None, ["0", "1", "2", "3"]) == ["0", "1", "2", "3"]
    assert worker_gpus(None, 2, ["4", "7"]) == ["4", "7", "4", "7"]
    assert worker_gpus(3, None, ["0", "1"]) == ["0", "1", "0"]
    with pytest.raises(UserError, match="needs CUDA GPUs"):
        worker_gpus(None, 2, [])
    with pytest.raises(UserError, match="not both"):
        worker_gpus(2, 2, ["0"])


def test_visible_gpus_are_named_as_cuda_visible_devices_names_them(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,2")
    assert visible_gpus(["auto", "auto"]) == ["5", "2"]
    assert visible_gpus(["cpu", "cpu"]) == []  # runs forced to the CPU use no GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(["cpu", "cuda"]) == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus(["auto", "auto"]) == []


def record_environment(spec, out, log):
    """A stand-in for compare.run_units in a worker process: note the GPU it sees and log a line."""
    log("compare: unit 1/1 x: retrain")
    (out / f"worker-{os.getpid()}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "none"))


def test_each_worker_process_sees_only_its_gpu_and_says_which(tmp_path, capfd):
    messages, before = [], os.environ.get("CUDA_VISIBLE_DEVICES")
    run_in_parallel(record_environment, two_units(), tmp_path, ["3", "5"], messages.append)
    assert sorted(p.read_text() for p in tmp_path.glob("worker-*.txt")) == ["3", "5"]
    assert messages[0].startswith("compare: 2 worker processes on GPU 3, 5 (1 per GPU), ")
    err = capfd.readouterr().err
    assert "[worker 2 on GPU 5] compare: unit 1/1 x: retrain" in err, err
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before  # this process's own setting is left as it was


def test_a_unit_is_found_by_name_or_number():
    spec = CompareSpec.for_preset("medium")
    units = units_of(spec)
    assert find_unit(spec, "1") == (1, units[0]) and units[0].name == "darts_v2"
    assert find_unit(spec, "sgblock-s0") == (4, units[3])
    assert find_unit(spec, str(len(units))) == (len(units), units[-1])
    with pytest.raises(UserError, match="units 1 to 22"):
        find_unit(spec, "23")
    with pytest.raises(UserError, match="no unit 'sgblock-s9'"):
        find_unit(spec, "sgblock-s9")


def test_list_units_says_which_are_done_running_or_waiting(tmp_path):
    spec = two_units()
    first, second = units_of(spec)
    summary = tmp_path / "augment" / first.name / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text("{}")
    with unit_claim(tmp_path, second) as claimed:
        assert claimed
        states = unit_states(spec, tmp_path)
        result = CliRunner().invoke(cli, ["compare", *TWO_UNITS, "--out", str(tmp_path), "--list-units", "--json"])
        assert not (tmp_path / "compare.json").exists()  # listing writes nothing
        assert run_named_unit(spec, tmp_path, second.name, log=lambda m: None) is False  # held: not run twice
    assert [(s["name"], s["state"]) for s in states] == [("darts-random0", "done"), ("darts-random1", "running")]
    assert f"pid {os.getpid()}" in states[1]["where"]
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == states
    assert [s["state"] for s in unit_states(spec, tmp_path)] == ["done", "waiting"]  # the claim ended with its holder
    result = CliRunner().invoke(cli, ["compare", *TWO_UNITS, "--out", str(tmp_path), "--list-units"])
    assert result.stdout.splitlines() == ["  1  darts-random0  random     done", "  2  darts-random1  random     waiting"]


def test_a_file_system_without_locks_is_a_clear_error_not_a_double_run(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UserError, match="must be on a file system with file locks"):
        with unit_claim(tmp_path, units_of(two_units())[0]):
            pass


def test_cluster_options_are_checked():
    run = lambda *args: CliRunner().invoke(cli, ["compare", *TWO_UNITS, "--out", "unused", *args])  # noqa: E731
    assert "only with --launcher slurm" in run("--partition", "gpu").output
    assert "give one of --list-units, --unit" in run("--list-units", "--unit", "1").output
    assert "--json goes with --list-units" in run("--json").output
    assert parse_time("90") == 90 and parse_time("1:30:00") == 90 and parse_time("2-00:00:00") == 2880
    assert parse_time("10:30") == 11 and parse_time("1-12") == 36 * 60
    with pytest.raises(UserError, match="bad --time"):
        parse_time("soon")


def test_the_report_counts_gpu_hours_per_process_and_says_them(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    epochs = [{"train_seconds": 3000, "eval_seconds": 600, "machine": "cuda: NVIDIA H200"},
              {"train_seconds": 1800, "eval_seconds": 0, "machine": "cuda: NVIDIA H200, 4 processes"},
              {"train_seconds": 7200, "eval_seconds": 0, "machine": "cpu: AMD EPYC, 2 threads"}]  # fmt: skip
    run.metrics_path.write_text("".join(json.dumps(e) + "\n" for e in epochs))
    assert compute_hours(run) == {"gpu_hours": pytest.approx(1.0 + 2.0), "cpu_hours": pytest.approx(2.0)}
    report = render_markdown([], two_units(), 2, {"gpu_hours": 3.0, "cpu_hours": 2.0})
    assert "Compute so far: 3.0 GPU-hours and 2.0 CPU process-hours" in report


def test_submitit_local_runs_two_units_as_separate_jobs_and_rebuilds_the_report(tmp_path, data_root):
    pytest.importorskip("submitit", reason="the Slurm launcher's extra: pip install 'darts-sg[slurm]'")
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "darts_sg", "compare", *TWO_UNITS, "--data-root", str(data_root), "--out", str(out),
           "--launcher", "submitit-local", "--gpus-per-unit", "0", "--cpus-per-unit", "1", "--time", "10", "--wait"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 units finished" in result.stdout
    submitted = json.loads((out / "jobs" / "submitted.json").read_text())
    assert sorted(submitted) == ["darts-random0", "darts-random1"] and len(set(submitted.values())) == 2
    ran_in = {}
    for name, job in submitted.items():  # each unit ran in its own job, which said where
        log = (out / "jobs" / job / f"{job}_0_log.err").read_text()
        assert f"{name}: retrain on " in log and "pid" in log, log
        ran_in[name] = log.split(f"{name}: retrain on ", 1)[1].splitlines()[0]
    assert len(set(ran_in.values())) == 2
    assert [r["name"] for r in json.loads((out / "rows.json").read_text())] == ["darts-random0", "darts-random1"]
    assert "Status: 2 of 2 units finished" in (out / "report.md").read_text()

    # the same command again submits nothing; after a unit is lost, only that unit
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "nothing to submit" in again.stderr, again.stderr
    (out / "augment" / "darts-random1" / "summary.json").unlink()
    (out / "augment" / "darts-random1" / "checkpoint.pt").unlink(missing_ok=True)
    third = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "darts-random0: finished" in third.stderr and third.stderr.count("submitted as job") == 1
    assert json.loads((out / "jobs" / "submitted.json").read_text())["darts-random1"] != submitted["darts-random1"]
    assert "Status: 2 of 2 units finished" in (out / "report.md").read_text()


def test_one_unit_under_torchrun_searches_and_retrains_on_two_processes(tmp_path, data_root):
    out = tmp_path / "cmp"
    spec_args = ["--preset", "smoke", "--spaces", "darts", "--seeds", "0", "--random", "1", "--references", "",
                 "--data-root", str(data_root), "--out", str(out)]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "darts_sg",
           "compare", *spec_args, "--unit", "darts-s0"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("compare: unit 1/2 darts-s0: search and retrain on ") == 1  # rank 0 alone logs
    rows = json.loads((out / "rows.json").read_text())
    assert [r["name"] for r in rows] == ["darts-s0"]
    assert rows[0]["machines"].endswith(", 2 processes") and rows[0]["cpu_hours"] > 0 and rows[0]["gpu_hours"] == 0
    spec = CompareSpec.for_preset("smoke", spaces=["darts"], seeds=[0], random=1, references=[])
    assert [s["state"] for s in unit_states(spec, prepare_experiment(spec, out, write=False))] == ["done", "waiting"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_units_share_each_gpu_with_units_per_gpu_2(tmp_path, data_root):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "darts_sg", "compare", *TWO_UNITS, "--data-root", str(data_root), "--out", str(out),
           "--units-per-gpu", "2"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    gpus = visible_gpus(["auto"])
    assert f"compare: {2 * len(gpus)} worker processes on GPU {', '.join(gpus)} (2 per GPU)" in result.stderr, result.stderr
    assert f"[worker 2 on GPU {gpus[1 % len(gpus)]}] " in result.stderr
    rows = json.loads((out / "rows.json").read_text())
    assert len(rows) == 2 and all(r["machines"].startswith("cuda: ") and r["gpu_hours"] > 0 for r in rows), rows
