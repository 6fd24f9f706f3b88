"""The paper's claims beside this project's figures (issue 44), from the committed comparisons.

Each row: what MobileNeXt (or DARTS) claims, the published figure, ours with its 95% interval, the number of
units behind it and the scale it holds at. Parameters are a property of the genotypes (given at the paper's
C=36, 20 cells); accuracies come from the medium protocol's 10-epoch retrainings at C=16, 8 cells.

    python scripts/claims_table.py                                  # print the table
    python scripts/claims_table.py --decisive results/compare-decisive-alr0.048-awd0 --write
                                                                    # also results/claims.md and the README's table

Reads `genotypes.json` and `rows.json` of results/compare-medium, results/compare-params and the decisive
protocol's folder (each written by its `darts-sg compare` report); a folder without them is left out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darts_sg.experiment.report import entropy_share, mean_pm, ratio_interval, size_adjusted_differences, welch_interval  # noqa: E402
from darts_sg.utils.io import atomic_write_text  # noqa: E402

MEDIUM, PARAMS = ROOT / "results/compare-medium", ROOT / "results/compare-params"
README_BEGIN, README_END = "<!-- claims: written by scripts/claims_table.py --write (the command in full: results/claims.md) -->", "<!-- /claims -->"
SCALE_NOTE = (
    "Both protocols search first order at C=8, 5 cells, for 1092 alpha steps (the paper: 50 epochs at C=16, 8 cells) "
    "and retrain for 10 epochs at C=16, 8 cells (the paper: 600 epochs at C=36, 20 cells), so the accuracy rows hold at "
    "this scale only; parameters are counted on the genotypes at the paper's C=36, 20 cells. The decisive protocol "
    "gives the alphas room to move (its pilot: scripts/decisive_pilot.py). Intervals are 95% Welch intervals; the "
    "relative parameter difference is that of the groups' geometric means (a Welch interval on log params). Alpha "
    "entropy: after the last epoch, as a share of the uniform maximum."
)


def load(folder: Path | None, name: str) -> list[dict]:
    """A comparison's genotypes.json or rows.json; empty when the folder or its report is missing."""
    path = folder / name if folder else None
    return json.loads(path.read_text()) if path and path.exists() else []


def values(rows: list[dict], kind: str, space: str, key: str) -> list[float]:
    return [float(r[key]) for r in rows if r["kind"] == kind and r["space"] == space and r.get(key) is not None]


def interval(result: dict[str, float] | None, scale: float = 100.0, unit: str = " points") -> str:
    if result is None:
        return "– (needs 2+ per group)"
    return f"{result['diff'] * scale:+.2f}{unit} [{result['low'] * scale:+.2f}, {result['high'] * scale:+.2f}]"


def p_value(result: dict[str, float] | None) -> str:
    return "" if result is None else ", p<0.001" if result["p"] < 0.001 else f", p={result['p']:.2f}"


def parameter_figure(genotypes: list[dict]) -> tuple[str, str]:
    """sgblock against darts searched cells at the paper's scale: (our figure, n). The relative difference's interval
    is the Welch interval of the log params, i.e. of the ratio of the groups' geometric means."""
    sg, base = values(genotypes, "searched", "sgblock", "paper_params"), values(genotypes, "searched", "darts", "paper_params")
    if not sg or not base:
        return "searches not finished yet", f"{len(sg)} + {len(base)}"
    text = f"{mean_pm(sg, 1e-6, unit=' M', count=False)} vs {mean_pm(base, 1e-6, unit=' M', count=False)}"
    ratio = ratio_interval(sg, base)
    if ratio is not None:
        text += f": **{100 * ratio['diff']:+.0f}% [{100 * ratio['low']:+.0f}%, {100 * ratio['high']:+.0f}%]**{p_value(ratio)}"
    with_sg = sum(r["sg_block_edges"] > 0 for r in genotypes if r["kind"] == "searched" and r["space"] == "sgblock")
    return f"{text}; {with_sg} of {len(sg)} sandglass cells use `sg_block`", f"{len(sg)} + {len(base)}"


def accuracy_figure(rows: list[dict], space: str, base_space: str = "darts", kind: str = "searched",
                    base_kind: str = "searched") -> tuple[str, str]:
    """Test accuracy of one group against another, in points with the Welch interval: (our figure, n)."""
    mine, base = values(rows, kind, space, "test_acc"), values(rows, base_kind, base_space, "test_acc")
    if not mine or not base:
        return "not retrained yet", f"{len(mine)} + {len(base)}"
    result = welch_interval(mine, base)
    return (f"{100 * statistics.fmean(mine):.2f}% vs {100 * statistics.fmean(base):.2f}%: "
            f"**{interval(result)}**{p_value(result)}", f"{len(mine)} + {len(base)}")  # fmt: skip


def searched_spread(rows: list[dict]) -> float:
    """The standard deviation of the searched cells' test accuracy within a space, pooled over the spaces (points)."""
    groups = [values(rows, "searched", space, "test_acc") for space in sorted({r["space"] for r in rows})]
    groups = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in groups)
    return 100 * math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / dof) if dof else math.nan


def firmness(genotypes: list[dict]) -> str:
    shares = [100 * entropy_share(r) for r in genotypes if r["kind"] == "searched"]
    return f"{statistics.fmean(shares):.1f}%" if shares else "–"


def source(folder: Path) -> str:
    return f"`{folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}`"


def claims(decisive: Path | None) -> list[tuple[str, str, str, str, str]]:
    """(claim, the paper, ours, n, protocol and source) per row."""
    protocols = [("medium", MEDIUM)] + ([("decisive", decisive)] if decisive else [])
    table = []
    parameter_searches = load(PARAMS, "genotypes.json")  # they hold the medium's searches
    for protocol, folder in protocols:
        genotypes = load(folder, "genotypes.json")
        if protocol == "medium" and parameter_searches:
            folder, genotypes = PARAMS, parameter_searches
        ours, n = parameter_figure(genotypes)
        table.append(("Sandglass cells have about 25% fewer parameters than DARTS cells", "-25% (~2.5 M vs 3.3 M, derived)",
                      ours, n, f"{protocol}, alpha entropy {firmness(genotypes)} ({source(folder)})"))  # fmt: skip
    for protocol, folder in protocols:
        retrained = [r for r in load(folder, "rows.json") if r.get("test_acc") is not None]
        if protocol == "decisive":  # random cells do not depend on the search protocol: the medium's, retrained alike
            retrained += [r for r in load(MEDIUM, "rows.json") if r["kind"] == "random"]
        where = f"{protocol} ({source(folder)})"
        ours, n = accuracy_figure(retrained, "sgblock")
        table.append(("The sandglass space gives more accurate cells than the DARTS space",
                      "+0.13 points (97.13% vs 97.00%, derived)", ours, n, where))  # fmt: skip
        if any(r["space"] == "invres" and r["kind"] == "searched" for r in retrained):
            ours, n = accuracy_figure(retrained, "invres")
            adjusted = size_adjusted_differences(retrained, sorted({r["space"] for r in retrained if r["kind"] != "reference"}))
            if adjusted and "invres" in adjusted["spaces"]:
                ours += f"; at equal size {interval(adjusted['spaces']['invres'])}"
            table.append(("Adding the inverted residual block lowers accuracy", "lower (no figure)", ours, n, where))
        for space in sorted({r["space"] for r in retrained if r["kind"] == "searched"}):
            ours, n = accuracy_figure(retrained, space, space, "searched", "random")
            table.append((f"Searched cells beat random ones (`{space}`)",
                          "DARTS: +0.29 points (3.00% error, first order, vs 3.29% for random search)", ours, n, where))  # fmt: skip
        for name in sorted({r["space"] for r in retrained if r["kind"] == "reference"}):
            accs = [100 * r["test_acc"] for r in retrained if r["kind"] == "reference" and r["space"] == name]
            if len(accs) > 1:
                table.append((f"The noise of retraining one cell ({name.upper()}, {len(accs)} seeds)", "not reported",
                              f"{mean_pm(accs, unit='%', count=False)} (range {min(accs):.2f}-{max(accs):.2f}%); the searched groups' "
                              f"std, pooled over the spaces: {searched_spread(retrained):.2f} points", str(len(accs)), where))  # fmt: skip
    return table


def markdown(table: list[tuple[str, ...]]) -> str:
    lines = ["| the claim | the paper | ours (95% interval) | n | protocol (folder) |", "|---|---|---|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n\n" + SCALE_NOTE + "\n"


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """`text` with what lies between the lines `begin` and `end` replaced by `body`."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        sys.exit(f"README.md has no '{begin}' ... '{end}' block: add the two lines where the table goes")
    return text[: start + len(begin)] + "\n" + body + text[stop:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisive", type=Path, help="the decisive protocol's comparison folder (scripts/decisive_pilot.py)")
    parser.add_argument("--write", action="store_true", help="write results/claims.md and the README's claims table")
    args = parser.parse_args()
    text = markdown(claims(args.decisive))
    print(text, end="")
    if args.write:
        command = "python scripts/claims_table.py" + (f" --decisive {args.decisive}" if args.decisive else "")
        atomic_write_text(ROOT / "results/claims.md", f"# The paper's claims beside ours\n\n`{command}`\n\n{text}")
        readme = ROOT / "README.md"
        atomic_write_text(readme, replace_between(readme.read_text(), README_BEGIN, README_END, text))


if __name__ == "__main__":
    main()
