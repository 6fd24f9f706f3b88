"""The process entry points (`search.py`, `augment.py`, `darts-sg`): the allocator first, then the command line.

The relaunch with tcmalloc (`allocator.py`) re-executes the process, so it comes before anything
heavy is imported: this module needs neither torch nor the command line until the relaunch is done,
and a command's start-up imports torch once instead of twice.
"""

from __future__ import annotations

import sys

from .utils.allocator import relaunch_with_tcmalloc
from .utils.errors import UserError


def _relaunch_first() -> None:
    try:
        relaunch_with_tcmalloc()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Entry point of the `darts-sg` console script."""
    _relaunch_first()
    from .cli import main as cli_main

    cli_main()


def search_main() -> None:
    """Entry point of `python search.py`."""
    _relaunch_first()
    from .cli import search_main as cli_search_main

    cli_search_main()


def augment_main() -> None:
    """Entry point of `python augment.py`."""
    _relaunch_first()
    from .cli import augment_main as cli_augment_main

    cli_augment_main()
