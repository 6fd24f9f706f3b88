"""The training loop shared by search and augment, and the plain training step.

``fit`` runs a ``Job`` epoch by epoch: progress (a bar on a terminal, timed lines elsewhere),
NaN guard, metrics lines, TensorBoard scalars, atomic checkpoints (per epoch and every N
steps), resume from any checkpoint, and a graceful stop on SIGINT/SIGTERM (finish the step,
checkpoint, say how to resume). What a step *does* is the job's business (``SearchJob`` in
search.py, ``AugmentJob`` in augment.py); ``weight_step`` is the plain optimizer step both use
for the network weights.
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import click
import torch
import torch.nn.functional as F

from ..speed.cuda_graphs import GraphedStep
from ..speed.precision import NO_SCALING, scaler_step
from ..utils.distributed import StopVote, average_gradients, is_main_process
from ..utils.io import append_jsonl, load_checkpoint, save_checkpoint
from .process import machine_name
from .progress import Progress, epoch_line
from .rundir import RunDirectory, RunError

__all__ = ["Job", "fit", "restore", "Interrupted", "NonFiniteLoss", "batch_sums", "evaluate", "graphed_batch_sums", "set_grads", "weight_step"]


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint was left untouched."""


class Job(Protocol):
    """What `fit` needs from a search or a retraining run."""

    kind: str

    def steps_per_epoch(self) -> int: ...
    def batches(self, epoch: int, start_step: int) -> Iterator[Any]: ...
    def begin_epoch(self, epoch: int) -> None: ...
    def train_step(self, batch: Any) -> dict[str, torch.Tensor]: ...
    def end_epoch(self, epoch: int) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def tensorboard(self, writer, epoch: int, metrics: dict[str, Any]) -> None: ...
    # Optional: a job with a true `stop_reason` attribute ends the run after the current epoch;
    # its `device` (CPU when absent) names the machine in each epoch's metrics.


def set_grads(loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """``loss.backward()`` for `params` alone: each one's ``.grad`` is its gradient, or None when `loss` does
    not depend on it (after ``zero_grad(set_to_none=True)``, the same as backward).

    Taken with ``torch.autograd.grad`` and assigned, so autograd's per-parameter accumulation
    (an op per parameter) never runs; the values are backward's.
    """
    trained = [p for p in params if p.requires_grad]
    for p, g in zip(trained, torch.autograd.grad(loss, trained, allow_unused=True)):
        p.grad = g


def weight_step(
    model: Callable,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    grad_clip: float,
    loss_fn: Callable = F.cross_entropy,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """One optimizer step on a training batch (gradients averaged over processes, norm clipped).

    With an enabled `scaler` (fp16) the loss is scaled and the gradients unscaled before the
    clip. Returns the loss and the model output, detached, and 1 if the step was skipped (an
    fp16 overflow) else 0.
    """
    scaler = scaler or NO_SCALING
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    output = model(x)
    loss = loss_fn(output, y)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    set_grads(scaler.scale(loss), params)
    average_gradients([p.grad for p in params if p.grad is not None])
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    skipped = scaler_step(scaler, optimizer)
    if isinstance(output, tuple):
        output = tuple(t.detach() if t is not None else None for t in output)
    else:
        output = output.detach()
    return loss.detach(), output, skipped


def batch_sums(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy, correct predictions and images of one batch (float64, on the batch's device)."""
    logits = model(x)
    return torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), (logits.argmax(1) == y).sum().double(),
                        torch.ones_like(y, dtype=torch.float64).sum()])  # fmt: skip


def graphed_batch_sums(model: torch.nn.Module, log: Callable[[str], None] | None = None) -> Callable:
    """`batch_sums` of `model` as a CUDA graph per batch shape (``darts_sg.speed.cuda_graphs``), for `evaluate`."""
    graphed = GraphedStep(lambda x, y: {"sums": batch_sums(model, x, y)}, eager_steps=1, log=log)
    return lambda x, y: graphed("eval", x, y)["sums"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, sums: Callable | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a loader, in eval mode (summed over processes).

    The sums stay on the batches' device (no host sync per batch; NCCL reduces device tensors
    only) and are read once at the end. `sums(x, y)` computes a batch's (`batch_sums`, or its
    CUDA graph: `graphed_batch_sums`).
    """
    was_training = model.training
    model.eval()
    totals = None
    for x, y in loader.iterate(0):
        batch = batch_sums(model, x, y) if sums is None else sums(x, y)
        totals = batch if totals is None else totals + batch
    if totals is None:
        totals = torch.zeros(3, dtype=torch.float64, device=next(model.parameters()).device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1)}


@dataclass
class EpochTotals:
    """Running sums of one epoch's training statistics (checkpointed, so resume is exact).

    Statistics are weighted by the batch's images (means per image), except the counts named
    ``skipped_*`` (fp16 steps skipped on overflow), which are summed as they are.
    """

    sums: dict[str, float] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0

    def add(self, stats: dict[str, float], images: int, seconds: float) -> None:
        """Add one step: `stats` are the step's means (and counts), `images` its batch size."""
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * (1 if _is_count(key) else images)
        self.images += images
        self.seconds += seconds

    def summary(self) -> dict[str, float]:
        n = max(self.images, 1)
        out = {key if _is_count(key) else f"train_{key}": total if _is_count(key) else total / n
               for key, total in self.sums.items()}  # fmt: skip
        out["images_per_s"] = self.images / self.seconds if self.seconds > 0 else 0.0
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "images": self.images, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "EpochTotals":
        return cls(dict(state["sums"]), int(state["images"]), float(state["seconds"]))


class PendingSteps:
    """Statistics of the steps since the last read, kept as device tensors until `flush`.

    Reading a CUDA tensor waits for the GPU, so the loop reads them all at once, once per
    log interval and before every checkpoint, instead of after every step.
    """

    def __init__(self):
        self.steps: list[tuple[int, dict[str, torch.Tensor], int, float]] = []

    def add(self, step: int, stats: dict[str, torch.Tensor], images: int, seconds: float) -> None:
        self.steps.append((step, stats, images, seconds))

    def flush(self, totals: EpochTotals, epoch: int, run_path) -> None:
        """Add the pending steps to `totals` with one device read; raise NonFiniteLoss at the first bad loss."""
        on_device = [v for _, stats, _, _ in self.steps for v in stats.values() if _is_device_tensor(v)]
        read = iter(torch.stack([v.detach().double() for v in on_device]).tolist() if on_device else ())
        for step, stats, images, seconds in self.steps:
            values = {k: next(read) if _is_device_tensor(v) else float(v) for k, v in stats.items()}
            if not math.isfinite(values["loss"]):
                self.steps = []
                raise NonFiniteLoss(
                    f"the training loss became {values['loss']} at epoch {epoch + 1}, step {step}; "
                    f"the last good checkpoint in {run_path} was kept (try a lower learning rate)"
                )
            totals.add(values, images, seconds)
        self.steps = []


def _is_count(key: str) -> bool:
    """Statistics summed as they are (fp16 steps skipped), not averaged over images."""
    return key.startswith("skipped_")


def _is_device_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type != "cpu"


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked between steps (a second SIGINT aborts at once)."""
    received: list[int] = []
    previous = {}

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore(job: Job, run: RunDirectory) -> tuple[int, int, EpochTotals]:
    """Load `run`'s checkpoint into `job` and the RNG; return (epoch, step, epoch totals) to continue from.

    Without a checkpoint (a run stopped before its first one) the run starts again from step 0. A
    checkpoint of another job or other settings is refused with a RunError (nothing is written).
    """
    if not run.checkpoint_path.exists():
        return 0, 0, EpochTotals()
    checkpoint = load_checkpoint(run.checkpoint_path)
    if checkpoint.get("kind") != job.kind:
        raise RunError(f"{run.checkpoint_path} is a {checkpoint.get('kind')} checkpoint, not a {job.kind} one")
    try:
        job.load_state_dict(checkpoint["job"])
        _set_rng_state(checkpoint["rng"])
        return int(checkpoint["epoch"]), int(checkpoint["step"]), EpochTotals.from_state(checkpoint["totals"])
    except RunError:  # the job's own refusal (another search space, another genotype)
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = f"it lacks {exc}" if isinstance(exc, KeyError) else next((line for line in lines if "mismatch" in line or "key" in line), lines[0])
        raise RunError(
            f"{run.checkpoint_path} does not fit this run ({reason[:200]}); it was written by other settings or another "
            "version: restore the run's own checkpoint, or start a new run"
        ) from None


def fit(
    job: Job,
    run: RunDirectory,
    epochs: int,
    checkpoint_every: int = 0,
    resume: bool = False,
    resume_hint: str = "",
    progress: bool = True,
    writer=None,
    log_every: float = 60.0,
    first_step_note: str = "",
    restored: tuple[int, int, EpochTotals] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) `job` for `epochs` epochs; returns all metrics records of the run.

    A resumed run continues from its checkpoint, loaded here or beforehand by `restore` (`restored`).

    `progress` shows a bar per epoch on a terminal, else a line every `log_every` seconds (see Progress).
    With a `first_step_note`, the wall time of this process's first step is logged with it.
    """
    main = is_main_process()
    epoch, start_step, totals = restored or (restore(job, run) if resume else (0, 0, EpochTotals()))
    if main and resume:
        run.trim_logs(epoch)  # drop the lines written after the checkpoint
    records = run.read_metrics() if main else []

    def save(next_epoch: int, next_step: int) -> None:
        if main:
            save_checkpoint(
                run.checkpoint_path,
                {
                    "kind": job.kind,
                    "job": job.state_dict(),
                    "rng": _rng_state(),
                    "epoch": next_epoch,
                    "step": next_step,
                    "totals": totals.state(),
                },
            )

    machine = machine_name(getattr(job, "device", torch.device("cpu")))
    n_steps = job.steps_per_epoch()
    bar = Progress(epochs, n_steps, epoch, start_step, enabled=progress and main, log_every=log_every)
    stop_vote = StopVote()
    with stop_on_signals() as received, closing(stop_vote):
        while epoch < epochs and not getattr(job, "stop_reason", None):
            job.begin_epoch(epoch)
            bar.begin_epoch(epoch, start_step)
            step = start_step
            tick = time.perf_counter()
            pending = PendingSteps()
            for batch in job.batches(epoch, start_step):
                stats = job.train_step(batch)
                images = int(stats.pop("count"))
                now = time.perf_counter()
                step += 1
                pending.add(step, stats, images, now - tick)
                if first_step_note and main:
                    click.echo(f"first step: {now - tick:.1f} s ({first_step_note})", err=True)
                    first_step_note = ""
                tick = now
                stop = stop_vote(bool(received))
                checkpoint_due = checkpoint_every and step % checkpoint_every == 0 and step < n_steps
                if stop or checkpoint_due or step == n_steps or bar.due():
                    pending.flush(totals, epoch, run.path)  # before any checkpoint: never save after a bad loss
                bar.update(step, totals)
                if stop:
                    save(epoch, step)
                    bar.end_epoch()
                    signum = received[0] if received else signal.SIGTERM  # another process was signalled
                    raise Interrupted(
                        f"stopped on signal {signal.Signals(signum).name} at epoch {epoch + 1}, step {step}; "
                        f"checkpoint saved; resume with: {resume_hint or '--resume ' + str(run.path)}",
                        signum,
                    )
                if checkpoint_due:
                    save(epoch, step)
            pending.flush(totals, epoch, run.path)
            bar.end_epoch()
            record = {"epoch": epoch + 1, **totals.summary(), "train_seconds": totals.seconds, "machine": machine}
            eval_start = time.perf_counter()
            record.update(job.end_epoch(epoch))
            record["eval_seconds"] = time.perf_counter() - eval_start
            if main:
                append_jsonl(run.metrics_path, record)
                if writer is not None:
                    job.tensorboard(writer, epoch + 1, record)
                    writer.flush()
                click.echo(epoch_line(record), err=True)
            records.append(record)
            epoch, start_step, totals = epoch + 1, 0, EpochTotals()
            save(epoch, 0)
    return records
