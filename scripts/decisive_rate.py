"""Pick the decisive protocol's alpha learning rate from finished pilot searches (issue 44).

The rule, fixed before the pilots ran: the lowest pilot rate whose search ended with its alpha
entropy (normal and reduction cell averaged) below 85% of the uniform maximum. A lower rate
decides as soon as it qualifies; a higher one only once every lower pilot has finished above
the threshold.

    python scripts/decisive_rate.py results/compare-decisive-alr0.048 results/compare-decisive-alr0.096

Each folder is a `darts-sg compare --search-only` output holding the pilot `search/darts-s0`,
named `...-alr<rate>`. Prints one line per pilot (to stderr) and, when a rate is chosen, the
chosen folder (to stdout); exits 1 while undecided or when no pilot qualifies.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from darts_sg.experiment.report import entropy_share, search_dynamics
from darts_sg.train.rundir import RunDirectory

THRESHOLD = 0.85  # the "below 85% of the maximum"
PILOT = "search/darts-s0"
EPOCHS = 7  # the medium search's


def pilot_share(folder: Path) -> float | None:
    """The pilot search's final entropy share, or None while it has not run all its epochs."""
    run = RunDirectory(folder / PILOT)
    if not (run.path / "genotype.json").exists() or len(run.read_metrics()) < EPOCHS:
        return None
    return entropy_share({**search_dynamics(run), "space": "darts"})


def rate_of(folder: Path) -> float:
    match = re.search(r"alr([0-9.]+)$", folder.name)
    if not match:
        sys.exit(f"{folder}: a pilot folder's name ends in alr<rate>, e.g. results/compare-decisive-alr0.048")
    return float(match.group(1))


def choose(pilots: list[tuple[float, float | None]]) -> tuple[float | None, str]:
    """The rule on (rate, final entropy share or None while running) pairs: (chosen rate or None, why)."""
    for rate, share in sorted(pilots):
        if share is None:
            return None, f"undecided: the pilot at {rate} has not finished"
        if share < THRESHOLD:
            return rate, f"{rate}: the lowest rate below {100 * THRESHOLD:.0f}% ({100 * share:.1f}%)"
    return None, f"no pilot rate brought the entropy below {100 * THRESHOLD:.0f}%: pilot a higher one"


def main(folders: list[str]) -> int:
    if not folders:
        sys.exit(__doc__)
    by_rate = dict(sorted((rate_of(Path(f)), Path(f)) for f in folders))
    pilots = [(rate, pilot_share(folder)) for rate, folder in by_rate.items()]
    for (rate, share), folder in zip(pilots, by_rate.values()):
        state = "running or not started" if share is None else f"final entropy {100 * share:.1f}% of the maximum"
        print(f"alpha lr {rate}: {state} ({folder})", file=sys.stderr)
    rate, why = choose(pilots)
    print(f"decisive alpha lr: {why}", file=sys.stderr)
    if rate is None:
        return 1
    print(by_rate[rate])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
