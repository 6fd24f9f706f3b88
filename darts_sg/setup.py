"""Process set-up shared by the jobs: threads, determinism, distributed init, TensorBoard, resume."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, TypeVar

import torch

from .batchnorm import use_wide_batchnorm
from .runs import RunDirectory

__all__ = ["autocast", "configure_torch", "fit_run", "log", "log_memory", "open_writer", "place_model", "resume_config", "start_run"]

# Run-time settings that may change when a run is resumed.
# The exact speed options are among them (`skip_none` is not: it changes the checkpoint layout).
RUNTIME_KEYS = {"checkpoint_every", "device", "data_root", "threads", "channels_last", "amp", "fast_dilated", "share_relu", "fused_sum",
                "recompute_cells", "fast_batchnorm"}

C = TypeVar("C")
M = TypeVar("M", bound=torch.nn.Module)


def place_model(model: M, config: Any, device: torch.device) -> M:
    """Move a new model to `device` and apply the run's layout and kernel switches
    (channels_last, recomputation, wide-view batch norm)."""
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.recompute_cells = config.recompute_cells
    use_wide_batchnorm(model, config.fast_batchnorm)
    return model


def configure_torch(config: Any) -> tuple[int, int]:
    """Apply threads and determinism; join the process group under torchrun. Returns (rank, world size)."""
    if getattr(config, "threads", 0):
        torch.set_num_threads(config.threads)
    if getattr(config, "deterministic", False):
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    from .distributed import init_from_environment

    return init_from_environment(getattr(config, "device", "auto"))


@contextmanager
def open_writer(run: RunDirectory) -> Iterator[Any]:
    """A TensorBoard SummaryWriter on the main process (None elsewhere), closed at the end."""
    from .engine import is_main_process

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


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on the job's device when `enabled` (the --amp flag), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def start_run(run: RunDirectory, config: Any, resume: bool) -> tuple[torch.device, int, int]:
    """Validate `config`, set up torch, and record the config in `run`; returns (device, rank, world size)."""
    from .engine import is_main_process, resolve_device

    config.validate()
    rank, world = configure_torch(config)
    device = resolve_device(config.device)
    if is_main_process():
        run.update_config(config.to_dict()) if resume else run.create(config.to_dict())
    return device, rank, world


def fit_run(
    job: Any, run: RunDirectory, config: Any, resume: bool, script: str, progress: bool, log_every: float = 60.0
) -> list[dict[str, Any]]:
    """Run `job` for the configured epochs with TensorBoard; `script` names the command that resumes it."""
    from .engine import fit

    with open_writer(run) as writer:
        return fit(
            job, run, config.epochs, config.checkpoint_every, resume,
            resume_hint=f"python {script} --resume {run.path}", progress=progress, writer=writer,
            log_every=log_every,
        )  # fmt: skip


def log(message: str) -> None:
    """One line of progress information on stderr (the main process only)."""
    from .engine import is_main_process

    if is_main_process():
        import click

        click.echo(message, err=True)


def log_memory(model: torch.nn.Module, config: Any, device: torch.device, world: int) -> None:
    """Log whether a step's activations fit in memory (main process only: the probe costs a few forwards)."""
    from .engine import is_main_process
    from .memory import memory_report

    if is_main_process():
        log(memory_report(model, config.batch_size // world, device, config.channels_last))
