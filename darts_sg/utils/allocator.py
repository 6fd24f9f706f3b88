"""tcmalloc for the jobs: the process relaunches itself once with it preloaded.

A CPU training step allocates and frees activation tensors of megabytes, many times per step.
glibc's malloc hands large blocks back to the kernel and takes them again, so every new tensor
is page-faulted in anew; tcmalloc keeps them for reuse. The allocator does not touch the
arithmetic, so the results are the same bit for bit (tests/test_allocator.py); the steps are
faster and lighter (benchmarks/results.md, run 7). An allocator must be chosen before the process
starts (``LD_PRELOAD``), so the entry points call `relaunch_with_tcmalloc` first: where Linux has
tcmalloc installed (Debian: ``libtcmalloc-minimal4``, which scripts/setup.sh installs) it re-executes
the same command (same PID) with the library preloaded. ``DARTS_SG_ALLOCATOR=system`` keeps
glibc's allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping

from .errors import UserError

__all__ = ["ALLOCATOR_ENV", "allocator_note", "find_tcmalloc", "loaded_allocator", "relaunch_env", "relaunch_with_tcmalloc"]

ALLOCATOR_ENV = "DARTS_SG_ALLOCATOR"
_CHOICES = ("auto", "system")
_RELAUNCHED_ENV = "DARTS_SG_RELAUNCHED"  # set on the relaunch, so that a library that failed to load is not retried


def find_tcmalloc() -> str | None:
    """The shared library name of tcmalloc (the minimal build first) if the system has one, else None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def relaunch_env(environ: Mapping[str, str], library: str | None) -> dict[str, str] | None:
    """The environment to relaunch with, tcmalloc preloaded; None when the process should go on as it is."""
    choice = environ.get(ALLOCATOR_ENV, "auto") or "auto"
    if choice not in _CHOICES:
        raise UserError(f"{ALLOCATOR_ENV}={choice!r} is not a choice; use auto (tcmalloc where installed) or system")
    preload = environ.get("LD_PRELOAD", "")
    if choice == "system" or library is None or "tcmalloc" in preload or _RELAUNCHED_ENV in environ:
        return None
    return {**environ, "LD_PRELOAD": f"{library}:{preload}" if preload else library, _RELAUNCHED_ENV: "1"}


def relaunch_with_tcmalloc() -> None:
    """Re-execute this command with tcmalloc preloaded, where Linux has it and it is not loaded yet."""
    if not sys.platform.startswith("linux"):
        return
    environ = relaunch_env(os.environ, find_tcmalloc())
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def loaded_allocator() -> str:
    """`tcmalloc` if this process has it loaded, else `system` (what config.json records)."""
    try:
        with open("/proc/self/maps") as maps:
            return "tcmalloc" if any("tcmalloc" in line for line in maps) else "system"
    except OSError:
        return "system"


def allocator_note(device_type: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """One line for a CPU job on glibc's malloc that did not ask for it: how to get tcmalloc; else None."""
    if device_type != "cpu" or environ.get(ALLOCATOR_ENV) == "system" or loaded_allocator() == "tcmalloc":
        return None
    return (
        "note: this CPU job runs on glibc's malloc; with tcmalloc installed (Debian: apt-get install "
        f"libtcmalloc-minimal4) its steps run ~1.2x faster, same results; {ALLOCATOR_ENV}=system silences this"
    )
