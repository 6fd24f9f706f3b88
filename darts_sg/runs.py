"""Run directories: creation, configuration, and resume compatibility.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and TensorBoard
event files (plus job-specific outputs). Creating a run in a directory that already holds one
is refused unless resuming, and resuming with a different configuration is refused too, so an
earlier run's results are never overwritten by mistake.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError
from .io import atomic_write_text

__all__ = ["RunError", "RunDirectory"]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class RunError(UserError):
    """A run directory that cannot be used as asked; the message says how to fix it."""


class RunDirectory:
    """Paths and bookkeeping of one run's output folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def file(self, *parts: str) -> Path:
        """A path inside the run directory (its parent folders created)."""
        target = self.path.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def exists(self) -> bool:
        return self.config_path.exists()

    def create(self, config: dict[str, Any]) -> None:
        """Start a new run here; refuse a directory that already holds a run or cannot be written."""
        if self.exists():
            raise RunError(f"{self.path} already holds a run; pass --resume {self.path} to continue it or choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise RunError(f"cannot write to output directory {self.path}: {exc.strerror}; choose another --out") from None
        atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def load_config(self) -> dict[str, Any]:
        if not self.exists():
            raise RunError(f"{self.path} holds no run to resume (no {CONFIG}); start one with --out {self.path}")
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{self.config_path} is unreadable ({exc}); it cannot be resumed") from None

    def check_resumable(self, stored: dict[str, Any], requested: dict[str, Any], keys: Iterable[str]) -> None:
        """Refuse to resume when any of `keys` differs between the stored and the requested config."""
        for key in keys:
            if key in requested and stored.get(key) != requested[key]:
                raise RunError(
                    f"cannot resume {self.path} with a different configuration: {key} is "
                    f"{stored.get(key)!r} there but {requested[key]!r} was asked for; drop the option or start a new run"
                )

    def update_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics lines written so far (a torn last line, from a kill mid-write, is ignored)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with `records` (used on resume to drop lines past the checkpoint)."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))
