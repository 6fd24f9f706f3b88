"""Pick the decisive protocol from finished pilot searches (issue 44).

The rule, fixed before the pilots ran: the pilots are listed in order of preference (the smallest departure
from DARTS's defaults first); the first one whose search ended with its alpha entropy (normal and reduction
cell averaged) below 85% of the uniform maximum decides, once every pilot before it has finished above the
threshold. A pilot later in the list cannot decide while an earlier one still runs.

    python scripts/decisive_pilot.py results/compare-decisive-alr0.048 results/compare-decisive-alr0.096 ...

Each folder is a `darts-sg compare --search-only` output holding the pilot `search/darts-s0`. Prints one line per
pilot (to stderr) and, when a pilot decides, its folder (to stdout); exits 1 while undecided or when none
qualifies. The options of a pilot (its alpha learning rate and weight decay) are read from its search's config.
"""

from __future__ import annotations

import json
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


def pilot_options(folder: Path) -> str:
    """The alpha optimiser's settings of a pilot that has started, as `alpha lr 0.048, weight decay 0.001`."""
    config_file = folder / PILOT / "config.json"
    if not config_file.exists():
        return "not started"
    config = json.loads(config_file.read_text())
    return f"alpha lr {config['alpha_lr']}, weight decay {config['alpha_weight_decay']}"


def choose(shares: list[float | None]) -> tuple[int | None, str]:
    """The rule on the pilots' final entropy shares (None while running), in order of preference:
    (index of the deciding pilot or None, why)."""
    for index, share in enumerate(shares):
        if share is None:
            return None, f"undecided: pilot {index + 1} has not finished"
        if share < THRESHOLD:
            return index, f"pilot {index + 1}, the first below {100 * THRESHOLD:.0f}% ({100 * share:.1f}%)"
    return None, f"no pilot brought the entropy below {100 * THRESHOLD:.0f}%: pilot another lever"


def main(folders: list[str]) -> int:
    if not folders:
        sys.exit(__doc__)
    paths = [Path(folder) for folder in folders]
    shares = [pilot_share(path) for path in paths]
    for index, (path, share) in enumerate(zip(paths, shares)):
        state = "running or not started" if share is None else f"final entropy {100 * share:.1f}% of the maximum"
        print(f"pilot {index + 1} ({pilot_options(path)}): {state} ({path})", file=sys.stderr)
    index, why = choose(shares)
    print(f"decisive protocol: {why}", file=sys.stderr)
    if index is None:
        return 1
    print(paths[index])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
