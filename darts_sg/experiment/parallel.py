"""The comparison's units in several processes at once (`darts-sg compare --jobs N`), and their claims.

One training process at these small shapes does not keep two CPU cores busy: on the project's
2-core machine, two one-thread processes together trained 1.14x (C=16 retrainings) to 1.44-1.55x
(`medium` searches) as many images per second as one two-thread process
(``benchmarks/bench_parallel_units.py``, run 9 in benchmarks/results.md). Each worker takes the next unit that has neither
finished nor been claimed, claiming it with an exclusive ``flock`` on ``<out>/.claims/<unit>.lock``
held while it runs the unit. The kernel drops the lock when its process ends, however it ends,
so a killed worker's unit is free for the next run, which resumes it from its checkpoint. The
report is rebuilt after every unit under a lock of its own. The same claims guard the units run
as scheduler jobs (`--unit NAME`, `--launcher slurm`): a unit is never run twice at once, on any
machine whose file system honours ``flock`` for the experiment folder (local disks, NFS, Lustre
mounted with ``-o flock``, GPFS).

On a machine with GPUs (the runs' device not forced to the CPU), the workers are spread over the
visible GPUs, one per GPU by default or K per GPU (`--units-per-gpu K`): each worker process sees
only its GPU (``CUDA_VISIBLE_DEVICES``), and its log lines say which one.

Stopping: SIGTERM to the main process is passed on to the workers, and Ctrl-C in the terminal
reaches them all; each finishes its step and checkpoints, as a single run does.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from ..utils.errors import UserError
from ..utils.io import file_lock as _file_lock, lock_held
from .plan import CompareSpec, Unit

__all__ = ["claim_holder", "claimed_elsewhere", "report_lock", "run_in_parallel", "unit_claim", "visible_gpus", "worker_gpus"]

_INTERRUPTED = 3  # a worker's exit code after a signal stopped it (its checkpoint saved)




def _claim_path(out: Path, unit: Unit) -> Path:
    return out / ".claims" / f"{unit.name}.lock"


def this_process() -> str:
    """Where this process runs, for a claim and the logs: host, process id, its GPUs and its Slurm job."""
    where = f"{socket.gethostname()} pid {os.getpid()}"
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        where += f", GPU {os.environ['CUDA_VISIBLE_DEVICES']}"
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    if job or os.environ.get("SLURM_JOB_ID"):
        where += f", Slurm job {job or os.environ['SLURM_JOB_ID']}"
    return where


def unit_claim(out: Path, unit: Unit) -> contextlib.AbstractContextManager[bool]:
    """Hold `unit`'s claim while the block runs; yields False when another process holds it."""
    return _file_lock(_claim_path(out, unit), wait=False, note=this_process(), patience=1.0)


def claim_holder(out: Path, unit: Unit) -> str | None:
    """Who holds `unit`'s claim now (None when nobody does): the holder's `this_process()` line.

    Looked up in /proc/locks without taking the claim (taking it, even briefly, could make a peer
    skip the unit); where that table is unknown, by trying the lock for an instant.
    """
    path = _claim_path(out, unit)
    held = lock_held(path)
    if held is None:
        with _file_lock(path, wait=False) as free:
            held = not free
    return (path.read_text().strip() or "another process") if held else None


def claimed_elsewhere(out: Path, units: list[Unit]) -> list[Unit]:
    """The units whose claim a process holds now (running elsewhere)."""
    return [unit for unit in units if claim_holder(out, unit) is not None]


@contextlib.contextmanager
def report_lock(out: Path) -> Iterator[None]:
    """One report writer at a time (the report reads every unit's files and rewrites the figures)."""
    with _file_lock(out / ".claims" / "report.lock", wait=True):
        yield


def visible_gpus(devices: list[str]) -> list[str]:
    """The GPUs the workers spread over (as CUDA_VISIBLE_DEVICES names them), for runs whose `devices` settings
    are not all `cpu`; none without CUDA."""
    if all(device == "cpu" for device in devices):
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(k) for k in range(count)])[:count]


def worker_gpus(jobs: int | None, units_per_gpu: int | None, gpus: list[str]) -> list[str | None]:
    """The GPU of each worker process (None: the CPU): by default one worker per GPU, `units_per_gpu` per GPU,
    or `jobs` workers dealt out over the GPUs in turn."""
    if not gpus:
        if units_per_gpu:
            raise UserError("--units-per-gpu needs CUDA GPUs and none is visible here; on a CPU use --jobs N")
        return [None] * (jobs or 1)
    if jobs and units_per_gpu:
        raise UserError("give --jobs N or --units-per-gpu K (K units on each GPU), not both")
    count = jobs or len(gpus) * (units_per_gpu or 1)
    return [gpus[k % len(gpus)] for k in range(count)]


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """`name` set to `value` in os.environ while the block runs (a spawned process inherits it); None: unchanged."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class _Prefixed(io.TextIOBase):
    """A text stream that starts every line with `prefix` (the worker's log lines, interleaved on one terminal)."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        for piece in text.splitlines(keepends=True):
            self.stream.write((self.prefix if self.at_line_start else "") + piece)
            self.at_line_start = piece.endswith("\n")
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _worker(run_units: Callable, spec: CompareSpec, out: str, threads: int, index: int, gpu: str | None) -> None:
    """A worker process: `run_units` (compare.run_units: unclaimed unfinished units, one after another)."""
    import torch

    from ..train.engine import Interrupted

    sys.stderr = _Prefixed(sys.stderr, f"[worker {index}{'' if gpu is None else f' on GPU {gpu}'}] ")
    torch.set_num_threads(threads)
    try:
        run_units(spec, Path(out), lambda message: print(message, file=sys.stderr))
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(_INTERRUPTED)


def run_in_parallel(run_units: Callable, spec: CompareSpec, out: Path, gpus: list[str | None], log: Callable[[str], None]) -> None:
    """Call `run_units(spec, out, log)` in one worker process per entry of `gpus` (`worker_gpus`): each sees only
    its GPU (None: the CPU) and takes an equal share of the CPU's threads."""
    if sys.platform == "win32":
        raise UserError("--jobs above 1 needs a POSIX system (file locks); run with --jobs 1")
    import torch

    from ..train.process import thread_count

    jobs = len(gpus)
    threads = max(1, torch.get_num_threads() // jobs)
    used = sorted({g for g in gpus if g is not None}, key=gpus.index)
    where = f" on GPU {', '.join(used)} ({jobs / len(used):g} per GPU)" if used else ""
    log(f"compare: {jobs} worker processes{where}, {thread_count(threads)} each")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(run_units, spec, str(out), threads, k + 1, gpu))
               for k, gpu in enumerate(gpus)]  # fmt: skip
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if signum == signal.SIGTERM:  # Ctrl-C reaches the workers from the terminal itself
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker, gpu in zip(workers, gpus):
            with _environment("CUDA_VISIBLE_DEVICES", gpu):
                worker.start()
        for worker in workers:
            worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [w.exitcode for w in workers]
    if received or _INTERRUPTED in codes:
        from ..train.engine import Interrupted

        saved = codes.count(_INTERRUPTED)  # workers that stopped inside a unit's training, after its checkpoint
        done = f"{saved} unit{'s' if saved != 1 else ''} in training saved {'their checkpoints' if saved != 1 else 'its checkpoint'}" if saved else "no unit had started training"
        raise Interrupted(f"stopped by a signal; {done}; resume with the same command", received[0] if received else signal.SIGTERM)
    failed = [f"worker {k} (exit code {code})" for k, code in enumerate(codes, 1) if code != 0]
    if failed:
        raise UserError(f"{', '.join(failed)} stopped on an error (shown above); fix it and run the same command to resume")
