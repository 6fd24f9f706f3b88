"""`darts-sg compare --launcher slurm`: one scheduler job per unfinished unit, submitted through submitit.

submitit (the library FAIR's code and Hydra's launcher use for this) pickles the call of
`run_unit_job` for each unit, submits them as one Slurm job array (at most `--array-parallelism`
running at once) and keeps each job's log under ``OUT/jobs/``. Every job runs `compare.run_named_unit`:
it claims its unit with the same file lock as `--jobs N` (a unit is never run twice at once),
resumes it from its checkpoint, and rebuilds the report when it finishes.

Preemption and time limits: Slurm's SIGTERM, and submitit's warning signal before the time limit,
stop the unit after its step with a checkpoint. A cluster that requeues preempted jobs runs the
same job again, which resumes; otherwise running the same command again submits the units that
have neither finished nor are running or waiting in the queue (their job ids are kept in
``OUT/jobs/submitted.json``). ``cluster="local"`` is submitit's local executor: the same code path
in processes of this machine, without a cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..utils.errors import UserError
from ..utils.io import atomic_write_text
from .compare import prepare_experiment, run_named_unit, unit_states, write_current_report
from .parallel import report_lock
from .plan import CompareSpec

__all__ = ["LaunchOptions", "parse_time", "run_unit_job", "submit_units", "wait_for_units"]

# The Slurm states of a job that is still going to run a unit (squeue/sacct names).
WAITING_OR_RUNNING = {"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}


@dataclass
class LaunchOptions:
    """What every unit's job asks the scheduler for."""

    cluster: str = "slurm"  # or "local": submitit's local executor (the same code path, no cluster)
    partition: str | None = None
    gpus_per_unit: int = 1  # above 1: one task per GPU, joined as by torchrun
    cpus_per_unit: int = 8  # per GPU (per task)
    time_min: int = 24 * 60
    array_parallelism: int = 256
    slurm_options: dict[str, str] = field(default_factory=dict)  # further sbatch options, e.g. account, qos, constraint


def parse_time(text: str) -> int:
    """A Slurm time limit in minutes: MINUTES, HH:MM:SS, MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise UserError(f"bad --time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = first, second or 0, third or 0
    elif third is not None:  # HH:MM:SS
        hours, minutes, seconds = first, second, third
    elif second is not None:  # MM:SS
        hours, minutes, seconds = 0, first, second
    else:  # MINUTES
        hours, minutes, seconds = 0, first, 0
    total = (days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise UserError(f"bad --time {text!r}: a job needs at least one minute")
    return total


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install 'darts-sg[slurm]'") from None
    return submitit


def _stop_on_preemption_warning() -> None:
    """Make submitit's warning signal (USR2, sent before the time limit or at preemption) stop the unit as SIGTERM
    does: after its step, with a checkpoint (in place of submitit's own handler, which exits mid-step)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signal.signal(getattr(signal, f"SIG{name}"), lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def run_unit_job(spec: CompareSpec, out: str, name: str, threads: int) -> bool:
    """What one scheduler job runs: the unit `name` (`compare.run_named_unit`), on all the job's tasks.

    Returns False when another process held the unit (nothing done)."""
    submitit = _import_submitit()
    import torch

    from ..utils.distributed import leave_process_group

    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:  # one task per GPU: the process group torchrun would set up
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    _stop_on_preemption_warning()
    torch.set_num_threads(threads)
    try:
        return run_named_unit(spec, out, name, log=lambda message: print(message, file=sys.stderr, flush=True))
    finally:
        leave_process_group()


def _submitted_path(out: Path) -> Path:
    return out / "jobs" / "submitted.json"


def _queued(out: Path, options: LaunchOptions) -> dict[str, str]:
    """The units whose last submitted job is still waiting or running in the scheduler: {unit: job id}."""
    path = _submitted_path(out)
    if options.cluster != "slurm" or not path.exists():  # a local job is either running (claimed) or gone
        return {}
    submitit = _import_submitit()
    submitted = json.loads(path.read_text())
    return {name: job_id for name, job_id in submitted.items()
            if submitit.SlurmJob(folder=out / "jobs" / "%j", job_id=job_id).state in WAITING_OR_RUNNING}  # fmt: skip


def _executor(out: Path, options: LaunchOptions):
    submitit = _import_submitit()
    executor = submitit.AutoExecutor(folder=out / "jobs" / "%j", cluster=options.cluster)
    tasks = max(1, options.gpus_per_unit)
    executor.update_parameters(
        name=f"darts-sg-{out.name}", timeout_min=options.time_min, nodes=1, tasks_per_node=tasks,
        gpus_per_node=options.gpus_per_unit, cpus_per_task=options.cpus_per_unit,
        slurm_partition=options.partition, slurm_array_parallelism=options.array_parallelism,
        slurm_additional_parameters=options.slurm_options or None,
    )  # fmt: skip
    return executor


def submit_units(spec: CompareSpec, out: str | Path, options: LaunchOptions, log: Callable[[str], None] = print) -> list[Any]:
    """Submit one job per unit that has not finished, is not running and has no job waiting in the queue;
    returns the submitit jobs (none when nothing was left to submit)."""
    _import_submitit()
    out = prepare_experiment(spec, out)
    queued = _queued(out, options)
    todo, states = [], unit_states(spec, out)
    for state in states:
        label = f"compare: unit {state['number']}/{len(states)} {state['name']}"
        if state["state"] == "done":
            log(f"{label}: finished")
        elif state["state"] == "running":
            log(f"{label}: running ({state['where']})")
        elif state["name"] in queued:
            log(f"{label}: waiting in the queue (job {queued[state['name']]})")
        else:
            todo.append(state["name"])
    if not todo:
        log("compare: nothing to submit")
        return []
    jobs = _executor(out, options).map_array(
        run_unit_job, [spec] * len(todo), [str(out)] * len(todo), todo, [options.cpus_per_unit] * len(todo)
    )
    path = _submitted_path(out)
    submitted = json.loads(path.read_text()) if path.exists() else {}
    submitted.update({name: job.job_id for name, job in zip(todo, jobs)})
    atomic_write_text(path, json.dumps(submitted, indent=2) + "\n")
    for name, job in zip(todo, jobs):
        log(f"compare: {name}: submitted as job {job.job_id} (log: {job.paths.stderr})")
    return jobs


def wait_for_units(spec: CompareSpec, out: str | Path, jobs: list[Any], log: Callable[[str], None] = print) -> list[dict | None]:
    """Wait for `jobs` (from `submit_units`) to end, then rebuild the report; a failed job is a UserError naming its log."""
    out = Path(out)
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # submitit re-raises the job's error (or the scheduler's) here
            first = str(exc).strip().splitlines()
            failed.append(f"job {job.job_id} ({first[-1] if first else type(exc).__name__}; log: {job.paths.stderr})")
    with report_lock(out):
        rows = write_current_report(spec, out)
    if failed:
        raise UserError(f"{len(failed)} of {len(jobs)} jobs failed: {'; '.join(failed)}; run the same command to resubmit")
    log(f"compare: {len(jobs)} jobs ended")
    return rows
