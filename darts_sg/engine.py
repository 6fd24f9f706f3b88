"""The training loop shared by search and augment, and the plain training step.

``fit`` runs a ``Job`` epoch by epoch: progress bar, NaN guard, metrics lines, TensorBoard
scalars, atomic checkpoints (per epoch and every N steps), resume from any checkpoint, and a
graceful stop on SIGINT/SIGTERM (finish the step, checkpoint, say how to resume). What a step
*does* is the job's business (``SearchJob`` in search.py, ``AugmentJob`` in augment.py);
``weight_step`` is the plain optimizer step both use for the network weights.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import click
import torch
import torch.nn.functional as F

from .distributed import average_gradients, is_main_process
from .io import append_jsonl, load_checkpoint, save_checkpoint
from .runs import RunDirectory, RunError

__all__ = ["Job", "fit", "Interrupted", "NonFiniteLoss", "evaluate", "weight_step"]


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
    # Optional: a job with a true `stop_reason` attribute ends the run after the current epoch.


def weight_step(
    model: Callable,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    grad_clip: float,
    loss_fn: Callable = F.cross_entropy,
) -> tuple[torch.Tensor, Any]:
    """One optimizer step on a training batch (gradients averaged over processes, norm clipped);
    returns the loss and the model output, detached."""
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    output = model(x)
    loss = loss_fn(output, y)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    average_gradients([p.grad for p in params if p.grad is not None])
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if isinstance(output, tuple):
        return loss.detach(), tuple(t.detach() if t is not None else None for t in output)
    return loss.detach(), output.detach()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a loader, in eval mode (summed over processes).

    The sums stay on the batches' device (no host sync per batch; NCCL reduces device tensors
    only) and are read once at the end.
    """
    was_training = model.training
    model.eval()
    totals = None
    for x, y in loader.iterate(0):
        logits = model(x)
        batch = torch.stack([torch.nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                             (logits.argmax(1) == y).sum().double(), torch.ones_like(y, dtype=torch.float64).sum()])  # fmt: skip
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
    """Running sums of one epoch's training statistics (checkpointed, so resume is exact)."""

    sums: dict[str, float] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0

    def add(self, stats: dict[str, float], images: int, seconds: float) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.images += images
        self.seconds += seconds

    def summary(self) -> dict[str, float]:
        n = max(self.images, 1)
        out = {f"train_{k}": v / n for k, v in self.sums.items()}
        out["images_per_s"] = self.images / self.seconds if self.seconds > 0 else 0.0
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "images": self.images, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "EpochTotals":
        return cls(dict(state["sums"]), int(state["images"]), float(state["seconds"]))


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


def fit(
    job: Job,
    run: RunDirectory,
    epochs: int,
    checkpoint_every: int = 0,
    resume: bool = False,
    resume_hint: str = "",
    progress: bool = True,
    writer=None,
) -> list[dict[str, Any]]:
    """Run (or continue) `job` for `epochs` epochs; returns all metrics records of the run."""
    main = is_main_process()
    epoch, start_step, totals = 0, 0, EpochTotals()
    if resume and run.checkpoint_path.exists():
        checkpoint = load_checkpoint(run.checkpoint_path)
        if checkpoint.get("kind") != job.kind:
            raise RunError(f"{run.checkpoint_path} is a {checkpoint.get('kind')} checkpoint, not a {job.kind} one")
        job.load_state_dict(checkpoint["job"])
        _set_rng_state(checkpoint["rng"])
        epoch, start_step = int(checkpoint["epoch"]), int(checkpoint["step"])
        totals = EpochTotals.from_state(checkpoint["totals"])
    records = [r for r in run.read_metrics() if r.get("epoch", 0) <= epoch] if main else []
    if main and resume:
        run.rewrite_metrics(records)  # drop lines written after the checkpoint

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

    n_steps = job.steps_per_epoch()
    with stop_on_signals() as received:
        while epoch < epochs and not getattr(job, "stop_reason", None):
            job.begin_epoch(epoch)
            bar = _progress(n_steps, start_step, f"epoch {epoch + 1}/{epochs}", enabled=progress and main)
            step = start_step
            tick = time.perf_counter()
            for batch in job.batches(epoch, start_step):
                stats = job.train_step(batch)
                values = {k: float(v) for k, v in stats.items()}
                if not math.isfinite(values["loss"]):
                    raise NonFiniteLoss(
                        f"the training loss became {values['loss']} at epoch {epoch + 1}, step {step + 1}; "
                        f"the last good checkpoint in {run.path} was kept (try a lower learning rate)"
                    )
                count = int(values.pop("count"))
                now = time.perf_counter()
                totals.add({k: v * count for k, v in values.items()}, count, now - tick)
                tick = now
                step += 1
                bar.update(totals)
                if received:
                    save(epoch, step)
                    bar.close()
                    raise Interrupted(
                        f"stopped on signal {signal.Signals(received[0]).name} at epoch {epoch + 1}, step {step}; "
                        f"checkpoint saved; resume with: {resume_hint or '--resume ' + str(run.path)}",
                        received[0],
                    )
                if checkpoint_every and step % checkpoint_every == 0 and step < n_steps:
                    save(epoch, step)
            bar.close()
            record = {"epoch": epoch + 1, **totals.summary(), "train_seconds": totals.seconds}
            eval_start = time.perf_counter()
            record.update(job.end_epoch(epoch))
            record["eval_seconds"] = time.perf_counter() - eval_start
            if main:
                append_jsonl(run.metrics_path, record)
                if writer is not None:
                    job.tensorboard(writer, epoch + 1, record)
                    writer.flush()
                click.echo(_epoch_line(record), err=True)
            records.append(record)
            epoch, start_step, totals = epoch + 1, 0, EpochTotals()
            save(epoch, 0)
    return records


def _epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['images_per_s']:.1f} img/s")
    return " | ".join(parts)


class _progress:
    """A click progress bar showing loss, accuracy and ETA (silent when disabled)."""

    def __init__(self, length: int, start: int, label: str, enabled: bool):
        self._totals: EpochTotals | None = None
        self._bar = None
        if enabled and length > 0:
            self._bar = click.progressbar(
                length=length,
                label=label,
                file=sys.stderr,
                show_eta=True,
                item_show_func=lambda _: self._describe(),
            )
            self._bar.__enter__()
            if start:
                self._bar.update(start)

    def _describe(self) -> str | None:
        if self._totals is None or not self._totals.images:
            return None
        s = self._totals.summary()
        return f"loss {s['train_loss']:.3f} acc {s.get('train_acc', 0):.3f} {s['images_per_s']:.0f} img/s"

    def update(self, totals: EpochTotals) -> None:
        self._totals = totals
        if self._bar is not None:
            self._bar.update(1, totals)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
