"""Crash-safe file output, run-folder locks, and safe checkpoint and JSON input.

Every result file is written to a temporary file in the same folder (created with mode 0666 less
the umask, as any other file), flushed to disk, and renamed over the target, so a crash or a kill
at any moment leaves either the old file or the new one, never a torn one; a temporary file left
by a kill is removed by `remove_stale_temporaries` at the next start. A write that fails (a full
disk) raises a one-line `WriteError` and leaves the old file in place. Checkpoints are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import time
import secrets
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import UserError

__all__ = [
    "WriteError", "CheckpointError", "atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint",
    "append_jsonl", "file_lock", "lock_held", "lock_holder", "make_parent", "read_json", "remove_stale_temporaries", "up_to_date",
    "writable_output",
]  # fmt: skip

TEMPORARY_SUFFIX = ".tmp"


class WriteError(UserError):
    """A file that could not be written (full disk, no permission, a file where a folder should be)."""


def _write_error(path: Path, exc: OSError) -> WriteError:
    advice = "free some space and run the command again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another path"
    return WriteError(f"cannot write {path}: {exc.strerror or exc}; the previous version of the file is intact; {advice}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: Path) -> tuple[int, Path]:
    """A new temporary file beside `path`, opened for writing (mode 0666 less the umask, as open() makes)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: temporary file, fsync, rename; a failure raises WriteError."""
    path = Path(path)
    try:
        fd, tmp = _temporary(path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a kill inside `atomic_write_bytes` left in `folder` and below; return them.

    Call it only while no other process writes there (a run folder under its lock).
    """
    removed = []
    for tmp in Path(folder).rglob(f".*{TEMPORARY_SUFFIX}"):
        if tmp.is_file() and tmp.name.count(".") >= 3:  # .<name>.<token>.tmp
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def writable_output(path: str | os.PathLike, what: str = "output") -> Path:
    """`path`, after checking that a file can be written there (its nearest existing folder is a writable
    folder, the path itself is no folder); raise a one-line UserError otherwise. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be created: {parent} is not writable")
    return path


def make_parent(path: str | os.PathLike) -> Path:
    """Create the folders above `path` (a WriteError when it cannot)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the folder {path.parent} ({exc.strerror or exc}: is a part of it a file?); choose another path") from None
    return path


def up_to_date(target: str | os.PathLike, source: str | os.PathLike) -> bool:
    """Whether `target` exists and was written after `source` last changed (`make`'s rule; equal times,
    which a coarse file-system clock can give, count as out of date)."""
    target, source = Path(target), Path(source)
    return target.is_file() and source.is_file() and target.stat().st_mtime_ns > source.stat().st_mtime_ns


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise `state` with torch.save and write it atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class CheckpointError(UserError):
    """A checkpoint that cannot be read."""


def _reason(exc: BaseException) -> str:
    """The line of torch.load's error that says what is wrong (not its advice to turn the safety off)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    return (useful or lines or [type(exc).__name__])[0]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (tensors and plain types only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:  # torch raises many kinds for a corrupt or unsafe file
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {_reason(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a darts-sg checkpoint (it holds a {type(state).__name__}, not a dictionary)")
    return state


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The JSON value in `path`, or a one-line UserError (missing, unreadable, not UTF-8, invalid, nested too deep)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text (UTF-8) file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be read") from None


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a failure raises WriteError)."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _write_error(Path(path), exc) from None


# ----------------------------------------------------------------------------------------- locks


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait: bool, note: str | None = None, patience: float = 0.0) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on `path` while the block runs (waiting for it, or yielding False when taken).

    The holder writes `note` (by default its PID, which `lock_holder` reads) into the file. Without
    `wait`, a taken lock is tried again for `patience` seconds. The kernel drops the lock when its
    process ends, however it ends. Without POSIX file locks (Windows) the lock is always granted:
    run one process per folder there.
    """
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path = make_parent(path)
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise _write_error(path, exc) from None
    with handle:
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.1)
            except OSError as exc:  # e.g. Lustre mounted without -o flock: ENOSYS
                raise UserError(f"cannot lock {path} ({exc.strerror}): the folder must be on a file system with file "
                                "locks (a local disk, NFS, Lustre mounted with -o flock, GPFS)") from None  # fmt: skip
        try:
            with contextlib.suppress(OSError):
                handle.truncate(0)
                handle.write(f"{os.getpid() if note is None else note}\n")
                handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_held(path: str | os.PathLike) -> bool | None:
    """Whether a process holds a ``flock`` on `path` now, read from Linux's /proc/locks without taking the
    lock (taking it, even briefly, could make a peer skip the work it guards); None where unknown."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    return any(fields[1] == "FLOCK" and fields[5] == file_id for fields in map(str.split, table.splitlines()) if len(fields) > 5)


def lock_holder(path: str | os.PathLike) -> int | None:
    """The PID written by the process holding the lock on `path` (None when unknown)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path(path).read_text().strip())
    return None
