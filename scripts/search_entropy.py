"""How firmly finished searches chose: each run's final alpha entropy as a share of the uniform maximum.

Prints, per search run folder, the entropy after every epoch (normal and reduction cell averaged, % of ln(ops)),
the alpha steps, the epoch from which the derived genotype no longer changed and its `sg_block` edges, the same
figures a `darts-sg compare` report gives for its searches (``darts_sg.experiment.report.search_dynamics``).

    python scripts/search_entropy.py results/quick-alpha-decay/*-s*
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darts_sg.experiment.report import search_dynamics  # noqa: E402
from darts_sg.model.ops import resolve_space  # noqa: E402
from darts_sg.train.config import SearchConfig  # noqa: E402
from darts_sg.train.rundir import RunDirectory  # noqa: E402


def describe(path: Path) -> str:
    """One line for one search run folder (or why it has no answer yet)."""
    run = RunDirectory(path)
    config = SearchConfig.from_dict(run.load_config())
    epochs = len(run.read_metrics())
    if epochs < config.epochs:
        return f"{path}: unfinished ({epochs} of {config.epochs} epochs)"
    dynamics = search_dynamics(run)
    top = math.log(len(resolve_space(config.ops)))  # the uniform maximum, as the report divides by (entropy_share)
    per_epoch = ", ".join(f"{100 * (n + r) / 2 / top:.1f}" for n, r in dynamics["entropy_per_epoch"])
    genotype = json.loads(run.file("genotype.json").read_text())
    sg = [sum(op == "sg_block" for op, _ in genotype[cell]) for cell in ("normal", "reduce")]
    return (f"{path}: entropy {per_epoch} % of the maximum (epochs 1-{epochs}); {dynamics['alpha_steps']} alpha steps "
            f"(alpha lr {config.alpha_lr:g}, weight decay {config.alpha_weight_decay:g}); genotype stable since epoch "
            f"{dynamics['stable_since_epoch']}; sg_block on {sg[0]} normal / {sg[1]} reduction edges")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="search run folders")
    for path in parser.parse_args().runs:
        print(describe(path))


if __name__ == "__main__":
    main()
