"""Run set-up shared by the jobs: start or resume a run, its acceleration, TensorBoard, the memory line."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, TypeVar

import click
import torch

from .accelerate import FLAGS, Acceleration, resolve_acceleration
from .allocator import allocator_note, loaded_allocator
from .distributed import is_main_process
from .engine import fit
from .memory import memory_report
from .runs import RunDirectory
from .runtime import configure_process, resolve_device

__all__ = ["RUNTIME_KEYS", "fit_run", "log", "log_memory", "open_writer", "resume_config", "start_run"]

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


def resume_config(run: RunDirectory, cls: type[C], requested: C, explicit: set[str] | None) -> C:
    """The stored config of `run`, with run-time settings from `requested`; refuse explicit conflicts."""
    stored = cls.from_dict(run.load_config())
    requested_dict = requested.to_dict()
    explicit = explicit or set()
    run.check_resumable(stored.to_dict(), {k: requested_dict[k] for k in explicit if k in requested_dict}, cls.IDENTITY)
    for key in RUNTIME_KEYS & explicit:
        setattr(stored, key, requested_dict[key])
    return stored


def start_run(run: RunDirectory, config: Any, resume: bool) -> tuple[torch.device, int, int, Acceleration]:
    """Validate `config`, set up the process, decide the acceleration and record both in `run`.

    Returns (device, rank, world size, acceleration); config.json gets the config and, under
    "acceleration", what the job will apply on this device, and under "allocator" the memory
    allocator the process runs with (``darts_sg.allocator``).
    """
    config.validate()
    rank, world = configure_process(config)
    device = resolve_device(config.device)
    acceleration = resolve_acceleration(config, device, log)
    if is_main_process():
        record = {**config.to_dict(), "acceleration": acceleration.to_dict(), "allocator": loaded_allocator()}
        run.update_config(record) if resume else run.create(record)
    return device, rank, world, acceleration


def fit_run(
    job: Any, run: RunDirectory, config: Any, resume: bool, script: str, progress: bool, log_every: float = 60.0
) -> list[dict[str, Any]]:
    """Run `job` for the configured epochs with TensorBoard; `script` names the command that resumes it.

    Under --compile the first step's time, which holds the compilation, is logged.
    """
    compiling = getattr(getattr(job, "acceleration", None), "compile", False)
    with open_writer(run) as writer:
        return fit(
            job, run, config.epochs, config.checkpoint_every, resume,
            resume_hint=f"python {script} --resume {run.path}", progress=progress, writer=writer,
            log_every=log_every, first_step_note="includes compiling the cells" if compiling else "",
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
