"""Run directories: creation, locking, configuration, and resume compatibility.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and TensorBoard
event files (plus job-specific outputs). One process at a time uses a run directory: it holds an
exclusive lock on ``.lock`` for the run's life (the file records its PID). Creating a run in a
directory that already holds one is refused unless resuming, and resuming with a different
configuration, or a run of the other job, is refused too, so an earlier run's results are never
overwritten by mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..utils.errors import UserError
from ..utils.io import atomic_write_text, file_lock, lock_holder, read_json, remove_stale_temporaries, writable_output

__all__ = ["RunError", "RunDirectory", "RUN_FILES", "check_output"]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"
# Logs with a line per epoch ({"epoch": N, ...}): trimmed to the checkpoint's epoch on resume.
EPOCH_LOGS = (METRICS, "alphas.jsonl")
# The files a run writes at its top level: an output path (export, evaluate --json) may not replace them.
RUN_FILES = (CONFIG, CHECKPOINT, *EPOCH_LOGS, "model.pt", "summary.json", "genotype.json", LOCK)
JOB_KEY = "job"  # config.json's record of the job that made the run: "search" or "augment"


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

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    def file(self, *parts: str) -> Path:
        """A path inside the run directory (its parent folders created)."""
        target = self.path.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def exists(self) -> bool:
        return self.config_path.exists()

    @contextlib.contextmanager
    def session(self, resume: bool, main: bool = True) -> Iterator[None]:
        """This process's hold on the run directory while the block runs (the run's life).

        A new run's directory is checked and created; the directory is locked (a second process
        gets a RunError naming the holder's PID) and temporary files left by a kill are removed.
        When the block fails before the new run saved a checkpoint, what it created is removed, so
        that the same command can be given again. Under torchrun only the `main` process (rank 0) does this.
        """
        if not main:
            yield
            return
        if resume and not self.exists():
            raise RunError(f"{self.path} holds no run to resume (no {CONFIG}); start one with --out {self.path}")
        undo = _Undo() if resume else self._new_directory()
        with file_lock(self.lock_path, wait=False) as held:
            if not held:
                undo.cancel()
                holder = lock_holder(self.lock_path)
                raise RunError(
                    f"{self.path} is in use by another process{f' (PID {holder})' if holder else ''}; "
                    "wait for it to finish or stop it, or choose another folder"
                )
            try:
                if not resume:
                    self._refuse_existing_run()
                remove_stale_temporaries(self.path)
                yield
            except BaseException:
                if not resume and not self.checkpoint_path.exists():
                    undo()
                raise

    def _refuse_existing_run(self) -> None:
        if self.exists():
            raise RunError(f"{self.path} already holds a run; pass --resume {self.path} to continue it or choose another --out")

    def _new_directory(self) -> "_Undo":
        """Check that a new run can be written here and create its directory; return how to remove what it adds."""
        self._refuse_existing_run()
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"output directory {self.path} is a file; choose another --out")
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        undo = _Undo(self.path, missing[-1] if missing else None)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            undo()
            raise RunError(f"cannot write to output directory {self.path}: {exc.strerror}; choose another --out") from None
        return undo

    def create(self, config: dict[str, Any]) -> None:
        """Write the configuration of a new run (in a directory `session` made)."""
        self._refuse_existing_run()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def load_config(self) -> dict[str, Any]:
        if not self.exists():
            raise RunError(f"{self.path} holds no run to resume (no {CONFIG}); start one with --out {self.path}")
        try:
            data = read_json(self.config_path, "run configuration")
        except UserError as exc:
            raise RunError(f"{exc}; it cannot be resumed") from None
        if not isinstance(data, dict):
            raise RunError(f"{self.config_path} holds no JSON object; it cannot be resumed")
        return data

    def check_job(self, stored: dict[str, Any], job: str) -> None:
        """Refuse a run that another job made (`job`: "search" or "augment"; runs made before config.json
        named its job are told apart by their settings)."""
        made_by = stored.get(JOB_KEY) or ("augment" if "genotype" in stored else "search" if "ops" in stored else None)
        if made_by == job:
            return
        if made_by not in ("search", "augment"):
            raise RunError(f"{self.config_path} records neither a search nor an augment run; it cannot be resumed")
        article = {"search": "a", "augment": "an"}
        raise RunError(
            f"{self.path} is {article[made_by]} {made_by} run, not {article[job]} {job} run; "
            f"resume it with: darts-sg {made_by} --resume {self.path}"
        )

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
        return _read_jsonl(self.metrics_path)

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with `records`."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))

    def trim_logs(self, epochs: int) -> None:
        """Keep the lines of the first `epochs` epochs in every per-epoch log (on resume: drop the lines written
        after the checkpoint, and a torn last line)."""
        for name in EPOCH_LOGS:
            path = self.path / name
            if path.exists():
                kept = [r for r in _read_jsonl(path) if r.get("epoch", 0) <= epochs]
                text = "".join(json.dumps(r) + "\n" for r in kept)
                if path.read_text(encoding="utf-8", errors="replace") != text:
                    atomic_write_text(path, text)


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """`path`, after checking that a file can be written there and that it would not replace a run's own
    file (config.json, model.pt, checkpoint.pt, ... of a folder holding a run); creates nothing."""
    path = writable_output(path, what)
    resolved = path.resolve()
    if resolved.name in RUN_FILES and (resolved.parent / CONFIG).exists():
        raise RunError(f"{what} {path} would replace the run's own {resolved.name} in {resolved.parent}; choose another path")
    return path


class _Undo:
    """Removes what a failed start added: the outermost folder it made, else the entries new in `folder`."""

    def __init__(self, folder: Path | None = None, made: Path | None = None):
        self.folder, self.made = folder, made
        self.before = set(os.listdir(folder)) if folder is not None and made is None and folder.is_dir() else None

    def cancel(self) -> None:
        self.folder = self.made = self.before = None

    def __call__(self) -> None:
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)
        elif self.before is not None:
            for name in set(os.listdir(self.folder)) - self.before:
                entry = self.folder / name
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON object lines of `path` up to the first one that does not parse (a torn line)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            break
        if not isinstance(record, dict):
            break
        records.append(record)
    return records
