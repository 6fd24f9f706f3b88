"""Run set-up shared by the jobs: start or resume a run, its acceleration, TensorBoard, the memory line."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, TypeVar

import click
import torch

from ..speed.accelerate import FLAGS, Acceleration, resolve_acceleration
from ..utils.allocator import allocator_note, loaded_allocator
from ..utils.distributed import is_main_process
from ..utils.errors import UserError
from .engine import fit
from .memory import memory_report
from .process import configure_process, resolve_device
from .rundir import JOB_KEY, RunDirectory, RunError

__all__ = [
    "RUNTIME_KEYS", "building", "fit_run", "launched_as_main", "log", "log_memory", "open_writer", "prepare_run", "record_run",
    "resume_config", "start_run",
]  # fmt: skip

# Run-time settings that may change when a run is resumed: where it runs, the exact speed
# switches (`skip_none` is not among them: it changes the checkpoint layout) and whether a
# search draws its per-epoch figures.
RUNTIME_KEYS = {"checkpoint_every", "device", "data_root", "threads", "workers", "figures", *FLAGS}

C = TypeVar("C")


@contextmanager
def open_writer(run: RunDirectory) -> Iterator[Any]:
    """A TensorBoard SummaryWriter on the main process (None elsewhere), closed at the end."""
    if not is_main_process():
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.path / "tensorboard"))
    try:
        yield writer
    finally:
        writer.close()


def resume_config(run: RunDirectory, cls: type[C], requested: C, explicit: set[str] | None, job: str = "") -> C:
    """The stored config of `run`, with run-time settings from `requested`; refuse explicit conflicts,
    a run of another `job` ("search" or "augment") and a config.json with values of the wrong type."""
    data = run.load_config()
    if job:
        run.check_job(data, job)
    try:
        stored = cls.from_dict(data)
    except UserError as exc:
        raise RunError(f"{run.config_path}: {exc}; restore the file or start a new run") from None
    requested_dict = requested.to_dict()
    explicit = explicit or set()
    run.check_resumable(stored.to_dict(), {k: requested_dict[k] for k in explicit if k in requested_dict}, cls.IDENTITY)
    for key in RUNTIME_KEYS & explicit:
        setattr(stored, key, requested_dict[key])
    return stored


def prepare_run(config: Any) -> tuple[torch.device, int, int, Acceleration]:
    """Validate `config`, set up the process and decide the acceleration; writes nothing.

    Returns (device, rank, world size, acceleration).
    """
    config.validate()
    rank, world = configure_process(config)
    device = resolve_device(config.device)
    return device, rank, world, resolve_acceleration(config, device, log)


def record_run(run: RunDirectory, config: Any, acceleration: Acceleration, resume: bool, job: str) -> None:
    """Write config.json (main process): the config, under "job" which job made the run, under
    "acceleration" what the job applies on this device, and under "allocator" the memory allocator
    the process runs with (``darts_sg.utils.allocator``)."""
    if is_main_process():
        record = {**config.to_dict(), JOB_KEY: job, "acceleration": acceleration.to_dict(), "allocator": loaded_allocator()}
        run.update_config(record) if resume else run.create(record)


def start_run(run: RunDirectory, config: Any, resume: bool, job: str = "") -> tuple[torch.device, int, int, Acceleration]:
    """`prepare_run`, then `record_run` at once (for a job that needs no other check before writing)."""
    device, rank, world, acceleration = prepare_run(config)
    record_run(run, config, acceleration, resume, job)
    return device, rank, world, acceleration


def launched_as_main() -> bool:
    """Whether this process is (or, under torchrun before the process group exists, will be) rank 0."""
    return is_main_process() and os.environ.get("RANK", "0") == "0"


@contextmanager
def building(what: str) -> Iterator[None]:
    """Turn an allocation failure while the job is built (a network too large for memory) into a UserError."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as exc:
        text = str(exc)
        if not isinstance(exc, (MemoryError, torch.OutOfMemoryError)) and "allocate" not in text and "out of memory" not in text:
            raise
        raise UserError(f"out of memory while building the {what} and loading its data ({text.strip().splitlines()[0][:120] if text.strip() else type(exc).__name__}); "
                        "lower --init-channels, --layers or --batch-size") from None


def fit_run(
    job: Any, run: RunDirectory, config: Any, resume: bool, script: str, progress: bool, log_every: float = 60.0,
    restored: Any = None,
) -> list[dict[str, Any]]:
    """Run `job` for the configured epochs with TensorBoard; `script` names the command that resumes it.

    Under --compile the first step's time, which holds the compilation, is logged.
    """
    compiling = getattr(getattr(job, "acceleration", None), "compile", False)
    with open_writer(run) as writer:
        return fit(
            job, run, config.epochs, config.checkpoint_every, resume,
            resume_hint=f"python {script} --resume {run.path}", progress=progress, writer=writer,
            log_every=log_every, first_step_note="includes compiling the cells" if compiling else "", restored=restored,
        )  # fmt: skip


def log(message: str) -> None:
    """One line of progress information on stderr (the main process only)."""
    if is_main_process():
        click.echo(message, err=True)


def log_memory(
    model: torch.nn.Module, config: Any, device: torch.device, world: int, channels_last: bool, image_size: int = 32
) -> None:
    """Log whether a step's activations fit in memory, and a note if a CPU job runs without tcmalloc (main process only)."""
    if is_main_process():
        log(memory_report(model, config.batch_size // world, device, channels_last, image_size))
        note = allocator_note(device.type)
        if note:
            log(note)
