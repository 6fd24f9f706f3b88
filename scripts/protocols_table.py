"""Two or more search protocols side by side, from the genotypes their comparisons found (issue 44).

Reads each experiment folder's genotypes.json (written by every `darts-sg compare` report) and prints, per
protocol and space, the searches' alpha learning rate and weight decay, how firmly the alphas chose (entropy after the last epoch
as a share of the uniform maximum), how stable the derived genotype was, how often `sg_block` was chosen and the
params at C=36, 20 cells. With --out, writes the table there too, and beside it a figure of the alpha entropy
per epoch of every protocol's searches (`<out stem>.png`).

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

from darts_sg.experiment.report import entropy_share, mean_pm  # noqa: E402
from darts_sg.plots.figures import figure_png  # noqa: E402
from darts_sg.train.config import SearchConfig  # noqa: E402
from darts_sg.utils.io import atomic_write_bytes, atomic_write_text  # noqa: E402


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
            entropy = mean_pm([100 * entropy_share(r) for r in mine], digits=1, count=False)
            stable = mean_pm([r["stable_since_epoch"] for r in mine], digits=1, count=False)
            params = mean_pm([r["paper_params"] for r in mine], 1e-6, count=False)
            decay = search.get("alpha_weight_decay", SearchConfig.alpha_weight_decay)
            changed = sum(r["stable_since_epoch"] >= search["epochs"] > 1 for r in mine)
            normal = statistics.fmean(r["sg_block_normal"] for r in mine)
            reduce = statistics.fmean(r["sg_block_reduce"] for r in mine)
            lines.append(
                f"| `{folder.name}` | {space} | {len(mine)} | {search['alpha_lr']:g} | {decay:g} | {mine[0]['alpha_steps']} | "
                f"{entropy} | {changed} of {len(mine)} | {stable} | {normal:.2f} / {reduce:.2f} | "
                f"{sum(r['sg_block_edges'] > 0 for r in mine)} of {len(mine)} | {params} |"
            )  # fmt: skip
    return "\n".join(lines) + "\n"


def entropy_png(folders: list[Path], threshold: float = 85.0) -> bytes:
    """The alpha entropy per epoch (% of the uniform maximum, normal and reduction cell averaged) of every search of
    every protocol: one colour per protocol, solid for `darts`, dashed for the other spaces."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    colours = colormaps["tab10"]
    for index, folder in enumerate(folders):
        rows = [r for r in json.loads((folder / "genotypes.json").read_text()) if r["kind"] == "searched"]
        for k, row in enumerate(rows):
            shares = [100 * entropy_share({"entropy_normal": normal, "entropy_reduce": reduce, "space": row["space"]})
                      for normal, reduce in row["entropy_per_epoch"]]  # fmt: skip
            ax.plot(range(1, len(shares) + 1), shares, color=colours(index % 10), lw=1.2, alpha=0.8,
                    ls="-" if row["space"] == "darts" else "--", label=folder.name if k == 0 else None)  # fmt: skip
    ax.axhline(threshold, color="grey", ls=":", lw=1)
    ax.annotate(f"{threshold:.0f}%", (1, threshold), fontsize=8, color="grey", va="bottom")
    ax.set_xlabel("search epoch")
    ax.set_ylabel("alpha entropy (% of the uniform maximum)")
    ax.set_title("How firmly the alphas chose, per protocol (solid: darts, dashed: other spaces)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return figure_png(fig)


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
        figure = args.out.with_suffix(".png")
        atomic_write_bytes(figure, entropy_png(args.folders))
        atomic_write_text(args.out, "# Search protocols side by side\n\n`python scripts/protocols_table.py "
                          + " ".join(str(f) for f in args.folders) + f" --out {args.out}`\n\n" + text
                          + f"\n![alpha entropy per epoch]({figure.name})\n")  # fmt: skip


if __name__ == "__main__":
    main()
