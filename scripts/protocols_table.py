"""Two or more search protocols side by side, from the genotypes their comparisons found (issue 44).

Reads each experiment folder's genotypes.json (written by every `darts-sg compare` report) and prints, per
protocol and space, the searches' alpha learning rate and weight decay, how firmly the alphas chose (entropy after the last epoch
as a share of the uniform maximum), how stable the derived genotype was, how often `sg_block` was chosen and the
params at C=36, 20 cells. With --out, writes the table there too.

    python scripts/protocols_table.py results/compare-medium results/compare-decisive --out results/search-protocols.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darts_sg.experiment.report import entropy_share, mean_std  # noqa: E402
from darts_sg.train.config import SearchConfig  # noqa: E402
from darts_sg.utils.io import atomic_write_text  # noqa: E402


def mean_pm(values: list[float], digits: int = 2) -> str:
    """Mean ± sample standard deviation (the value alone for one)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if values else "–"


def table(folders: list[Path]) -> str:
    lines = ["| protocol | space | searches | alpha lr | alpha weight decay | alpha steps | entropy (% of max) | changed in the last epoch | "
             "stable since epoch | `sg_block` edges normal / reduce | with `sg_block` | params C=36/20 (M) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for folder in folders:
        spec = json.loads((folder / "compare.json").read_text())
        search = spec["search"]
        rows = [r for r in json.loads((folder / "genotypes.json").read_text()) if r["kind"] == "searched"]
        for space in spec["spaces"]:
            mine = [r for r in rows if r["space"] == space]
            if not mine:
                continue
            share = [100 * entropy_share(r) for r in mine]
            changed = sum(r["stable_since_epoch"] >= search["epochs"] > 1 for r in mine)
            normal = statistics.fmean(r["sg_block_normal"] for r in mine)
            reduce = statistics.fmean(r["sg_block_reduce"] for r in mine)
            lines.append(
                f"| `{folder.name}` | {space} | {len(mine)} | {search['alpha_lr']:g} | {search.get('alpha_weight_decay', SearchConfig.alpha_weight_decay):g} | {mine[0]['alpha_steps']} | "
                f"{mean_pm(share, 1)} | {changed} of {len(mine)} | {mean_pm([r['stable_since_epoch'] for r in mine], 1)} | "
                f"{normal:.2f} / {reduce:.2f} | {sum(r['sg_block_edges'] > 0 for r in mine)} of {len(mine)} | "
                f"{mean_pm([r['paper_params'] / 1e6 for r in mine])} |"
            )  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="comparison folders (each with compare.json and genotypes.json)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    missing = [str(f) for f in args.folders if not (f / "genotypes.json").exists()]
    if missing:
        sys.exit(f"no genotypes.json in {', '.join(missing)}: rebuild the report first (darts-sg compare ... --report-only)")
    text = table(args.folders)
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, "# Search protocols side by side\n\n`python scripts/protocols_table.py "
                          + " ".join(str(f) for f in args.folders) + "`\n\n" + text)  # fmt: skip


if __name__ == "__main__":
    main()
