"""Progress of a run: a bar per epoch on a terminal, timed lines elsewhere, with ETAs; the epoch line."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

__all__ = ["Progress", "epoch_line", "duration"]


def epoch_line(record: dict[str, Any]) -> str:
    """The line printed at the end of an epoch: its losses, accuracies and images per second."""
    parts = [f"epoch {record['epoch']}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['images_per_s']:.1f} img/s")
    return " | ".join(parts)


def duration(seconds: float) -> str:
    """h:mm:ss (days spelled out beyond 24 h)."""
    seconds = max(int(round(seconds)), 0)
    days, rest = divmod(seconds, 86_400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


BAR_REFRESH = 1.0  # seconds between statistics updates of the bar on a terminal


class Progress:
    """Per-step progress of a run, with ETAs for the epoch and for the whole run.

    On a terminal: a click progress bar per epoch (its own ETA is the epoch's), with loss,
    accuracy, images/s and the run's ETA beside it. Off a terminal (nohup, a scheduler, CI),
    where a bar shows only its label: one line every `log_every` seconds (0 = every step) with
    step, loss, accuracy, images/s and both ETAs. ETAs extrapolate the wall time per step of
    this process, evaluation included.
    """

    def __init__(
        self, epochs: int, steps_per_epoch: int, start_epoch: int, start_step: int, enabled: bool = True,
        log_every: float = 60.0, stream=None, clock=time.perf_counter,
    ):  # fmt: skip
        self.epochs, self.steps = epochs, steps_per_epoch
        self.enabled = enabled and steps_per_epoch > 0
        self.log_every = log_every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start_time, self._start_done = clock(), start_epoch * steps_per_epoch + start_step
        self._epoch = start_epoch
        self._epoch_time, self._epoch_start_step = self._start_time, start_step
        self._last_line = self._start_time
        self._step = start_step
        self._totals: Any = None
        self._bar = None

    def begin_epoch(self, epoch: int, start_step: int) -> None:
        self._epoch, self._step, self._totals = epoch, start_step, None
        self._epoch_time = self._last_line = self.clock()
        self._epoch_start_step = start_step
        if self.enabled and self.tty:
            self._bar = click.progressbar(
                length=self.steps, label=f"epoch {epoch + 1}/{self.epochs}", file=self.stream, show_eta=True,
                item_show_func=lambda _: self._bar_text(),
            )  # fmt: skip
            self._bar.__enter__()
            if start_step:
                self._bar.update(start_step)

    def run_eta(self) -> float | None:
        """Seconds left for the whole run, from this process's wall time per step so far."""
        done = self._epoch * self.steps + self._step - self._start_done
        if done <= 0:
            return None
        per_step = (self.clock() - self._start_time) / done
        return per_step * (self.epochs * self.steps - self._epoch * self.steps - self._step)

    def epoch_eta(self) -> float | None:
        done = self._step - self._epoch_start_step
        if done <= 0:
            return None
        return (self.clock() - self._epoch_time) / done * (self.steps - self._step)

    def _stats(self) -> list[str]:
        if self._totals is None or not self._totals.images:
            return []
        s = self._totals.summary()
        parts = [f"loss {s['train_loss']:.3f}"]
        if "train_acc" in s:
            parts.append(f"acc {s['train_acc']:.3f}")
        parts.append(f"{s['images_per_s']:.1f} img/s")
        return parts

    def _bar_text(self) -> str | None:
        run_eta = self.run_eta()
        parts = self._stats() + ([f"run ETA {duration(run_eta)}"] if run_eta is not None else [])
        return " | ".join(parts) or None

    def line(self) -> str:
        """The progress line printed off a terminal."""
        parts = [f"epoch {self._epoch + 1}/{self.epochs} step {self._step}/{self.steps}", *self._stats()]
        for name, eta in (("epoch", self.epoch_eta()), ("run", self.run_eta())):
            if eta is not None:
                parts.append(f"{name} ETA {duration(eta)}")
        return " | ".join(parts)

    def due(self) -> bool:
        """Whether the next `update` shows statistics (the caller brings its totals up to date first)."""
        if not self.enabled:
            return False
        interval = BAR_REFRESH if self._bar is not None else self.log_every
        return self.clock() - self._last_line >= interval

    def update(self, step: int, totals: Any) -> None:
        """Record that `step` steps of the epoch are done; `totals` (the engine's `EpochTotals`) are read when a line or the bar is due."""
        due = self.due()
        self._step, self._totals = step, totals
        if not self.enabled:
            return
        if due:
            self._last_line = self.clock()
        if self._bar is not None:
            self._bar.update(1)
            return
        if due and not self.tty:
            click.echo(self.line(), file=self.stream)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
