"""The comparison's units in several processes at once (`darts-sg compare --jobs N`).

One training process at these small shapes does not keep two CPU cores busy: on the project's
2-core machine, two one-thread processes together trained 1.14x (C=16 retrainings) to 1.44-1.55x
(`medium` searches) as many images per second as one two-thread process
(``benchmarks/bench_parallel_units.py``, run 9 in benchmarks/results.md). Each worker takes the next unit that has neither
finished nor been claimed, claiming it with an exclusive ``flock`` on ``<out>/.claims/<unit>.lock``
held while it runs the unit. The kernel drops the lock when its process ends, however it ends,
so a killed worker's unit is free for the next run, which resumes it from its checkpoint. The
report is rebuilt after every unit under a lock of its own.

Stopping: SIGTERM to the main process is passed on to the workers, and Ctrl-C in the terminal
reaches them all; each finishes its step and checkpoints, as a single run does.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

from .compare_plan import CompareSpec, Unit
from .errors import UserError
from .io import file_lock as _file_lock, lock_held

__all__ = ["claimed_elsewhere", "run_in_parallel", "unit_claim"]

_INTERRUPTED = 3  # a worker's exit code after a signal stopped it (its checkpoint saved)


def claimed_elsewhere(out: Path, units: list[Unit]) -> list[Unit]:
    """The units whose claim a process holds now (running elsewhere), looked up without taking any claim."""
    return [unit for unit in units if lock_held(_claim_path(out, unit))]


def _claim_path(out: Path, unit: Unit) -> Path:
    return out / ".claims" / f"{unit.name}.lock"


def unit_claim(out: Path, unit: Unit) -> contextlib.AbstractContextManager[bool]:
    """Hold `unit`'s claim while the block runs; yields False when another process holds it."""
    return _file_lock(_claim_path(out, unit), wait=False)


@contextlib.contextmanager
def report_lock(out: Path) -> Iterator[None]:
    """One report writer at a time (the report reads every unit's files and rewrites the figures)."""
    with _file_lock(out / ".claims" / "report.lock", wait=True):
        yield


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


def _worker(run_units: Callable, spec: CompareSpec, out: str, threads: int, index: int) -> None:
    """A worker process: `run_units` (compare.run_units: unclaimed unfinished units, one after another)."""
    import torch

    from .engine import Interrupted

    sys.stderr = _Prefixed(sys.stderr, f"[worker {index}] ")
    torch.set_num_threads(threads)
    try:
        run_units(spec, Path(out), lambda message: print(message, file=sys.stderr))
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(_INTERRUPTED)


def run_in_parallel(run_units: Callable, spec: CompareSpec, out: Path, jobs: int, log: Callable[[str], None]) -> None:
    """Call `run_units(spec, out, log)` in `jobs` worker processes, each with an equal share of the CPU's threads."""
    if sys.platform == "win32":
        raise UserError("--jobs above 1 needs a POSIX system (file locks); run with --jobs 1")
    import torch

    from .runtime import thread_count

    threads = max(1, torch.get_num_threads() // jobs)
    log(f"compare: {jobs} worker processes, {thread_count(threads)} each")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(run_units, spec, str(out), threads, k + 1)) for k in range(jobs)]
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if signum == signal.SIGTERM:  # Ctrl-C reaches the workers from the terminal itself
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [w.exitcode for w in workers]
    if received or _INTERRUPTED in codes:
        from .engine import Interrupted

        saved = codes.count(_INTERRUPTED)  # workers that stopped inside a unit's training, after its checkpoint
        done = f"{saved} unit{'s' if saved != 1 else ''} in training saved {'their checkpoints' if saved != 1 else 'its checkpoint'}" if saved else "no unit had started training"
        raise Interrupted(f"stopped by a signal; {done}; resume with the same command", received[0] if received else signal.SIGTERM)
    failed = [f"worker {k} (exit code {code})" for k, code in enumerate(codes, 1) if code != 0]
    if failed:
        raise UserError(f"{', '.join(failed)} stopped on an error (shown above); fix it and run the same command to resume")
