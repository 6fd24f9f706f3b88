"""The comparison's report: one row per finished unit, statistics per space, figures, plain-words answer.

Everything here reads finished run folders and writes the report files (report.md, rows.json,
rows.csv, accuracy_vs_params.png, accuracy_vs_cost.png, cells/); nothing trains. Differences between groups are
given with 95% Welch confidence intervals (unequal variances, small samples), via SciPy; the
comparison at equal size is an ordinary least-squares fit, via statsmodels.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Sequence

from ..model.genotype import Genotype, load_genotype
from ..model.ops import resolve_space
from ..train.config import AugmentConfig, SearchConfig
from ..train.cost import COST_UNITS
from ..train.rundir import RunDirectory
from ..utils.io import atomic_write_bytes, atomic_write_text, up_to_date
from .plan import CompareSpec, Unit, augment_settings, genotype_path, search_finished, search_settings, units_of

__all__ = ["PAPER_CLAIM", "compute_hours", "entropy_share", "mean_std", "grid_hours", "unit_row", "welch_interval", "size_adjusted_differences", "write_report",
           "render_markdown", "pareto_front", "accuracy_vs_cost_png"]  # fmt: skip

PAPER_CLAIM = (
    "MobileNeXt (Zhou et al., ECCV 2020) reports that adding the sandglass block to the DARTS space gives cells with "
    "about 25% fewer parameters and higher CIFAR-10 accuracy (+0.13% top-1; ~97.13% vs 97.00% at ~2.5M vs 3.3M "
    "params, the last figures derived), while adding the inverted residual block lowers accuracy."
)
# what the paper says of each space's parameters against the DARTS space's
PAPER_PARAMS_NOTE = {"sgblock": "the paper: about -25%", "invres": "the paper gives no parameter figure for the inverted-residual space"}
PAPER_SCALE = {"init_channels": 36, "layers": 20}  # the DARTS evaluation network (trained 600 epochs there)
PAPER_TRAINING = "600 epochs at C=36, 20 cells, where DARTS (second order) reached 2.76 ± 0.09% test error"
CSV_COLUMNS = [
    "name", "kind", "space", "seed", "test_acc", "params", "flops", "paper_params", "paper_flops", "sg_block_edges",
    "sg_block_normal", "sg_block_reduce", "inv_res_edges", "normal_skips", "search_val_acc", "alpha_steps", "stable_since_epoch", "entropy_normal",
    "entropy_reduce", "search_seconds", "train_seconds", "gpu_hours", "cpu_hours", "machines", "latency_ms", "search_cost",
    "budget_met_by",
]  # fmt: skip
# The cost the report draws accuracy against, per `--cost` of the searches (params when none): (row key, axis, scale).
COST_AXES = {
    "params": ("params", "parameters of the retrained network (M)", 1e-6),
    "flops": ("flops", "FLOPs per image of the retrained network (M)", 1e-6),
    "latency": ("latency_ms", "CPU latency of the retrained network, batch 1 (ms)", 1.0),
}


# ----------------------------------------------------------------------------------------- rows


def paper_scale_cost(genotype: Genotype, spec: CompareSpec) -> tuple[int, int]:
    """Params (auxiliary head excluded) and forward FLOPs per image of `genotype` at C=36, 20 cells."""
    import torch

    from ..model.network import Network, count_params
    from ..model.measure import flops_per_image

    options = AugmentConfig(**augment_settings(spec)).op_options()
    torch.manual_seed(0)
    net = Network(genotype, PAPER_SCALE["init_channels"], PAPER_SCALE["layers"], 10, auxiliary=False, options=options)
    return count_params(net), flops_per_image(net, torch.device("cpu"))


def _cached_paper_scale_cost(out: Path, unit: Unit, genotype: Genotype, spec: CompareSpec) -> tuple[int, int]:
    path = out / "paper_scale" / f"{unit.name}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["genotype"] == genotype.to_dict():
            return cached["params"], cached["flops"]
    params, flops = paper_scale_cost(genotype, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"genotype": genotype.to_dict(), "params": params, "flops": flops}) + "\n")
    return params, flops


def _entropy(weights: Sequence[Sequence[float]]) -> float:
    """Mean per-edge entropy of recorded alpha weights, in float64 and to 6 decimals: the same figure on every CPU
    (float32 logs differ in the 7th digit between vector units, which would churn the committed results)."""
    import torch

    from ..plots.visualize import alpha_entropy

    return round(alpha_entropy(torch.tensor(weights, dtype=torch.float64)), 6)


def search_dynamics(run: RunDirectory) -> dict[str, Any]:
    """How a search's alphas settled: final entropies and the epoch from which the genotype no longer changed."""
    from ..plots.visualize import read_alpha_records

    alphas = read_alpha_records(run.file("alphas.jsonl"))
    epochs = sorted(run.path.glob("genotypes/epoch_*.json"))
    genotypes = [load_genotype(str(p)) for p in epochs]
    stable = len(genotypes)
    while stable > 1 and genotypes[stable - 2] == genotypes[-1]:
        stable -= 1
    metrics = run.read_metrics()
    config = SearchConfig.from_dict(run.load_config())
    return {
        "search_val_acc": metrics[-1]["val_acc"],
        "search_seconds": sum(m.get("train_seconds", 0) + m.get("eval_seconds", 0) for m in metrics),
        "alpha_steps": round(sum(m.get("images_per_s", 0) * m.get("train_seconds", 0) for m in metrics
                                 if not m.get("warmup")) / config.batch_size),  # fmt: skip
        "stable_since_epoch": stable,
        "entropy_normal": _entropy(alphas[-1]["normal"]),
        "entropy_reduce": _entropy(alphas[-1]["reduce"]),
        "entropy_per_epoch": [[_entropy(a["normal"]), _entropy(a["reduce"])] for a in alphas],
    }


def machines_of(*runs: RunDirectory) -> str:
    """The machines the epochs of `runs` ran on, as recorded in their metrics ("not recorded" for older lines)."""
    names = [m.get("machine", "not recorded") for run in runs for m in run.read_metrics()]
    return "; ".join(dict.fromkeys(names))


def compute_hours(*runs: RunDirectory) -> dict[str, float]:
    """The hours the epochs of `runs` took (training and evaluation, wall-clock) times the processes that ran them
    (a torchrun unit on 4 GPUs counts 4), on GPUs and on CPUs, from the machine each epoch recorded."""
    hours = {"gpu_hours": 0.0, "cpu_hours": 0.0}
    for m in (m for run in runs for m in run.read_metrics()):
        machine = m.get("machine", "cpu")
        processes = re.search(r", (\d+) processes$", machine)
        seconds = (m.get("train_seconds", 0) + m.get("eval_seconds", 0)) * (int(processes[1]) if processes else 1)
        hours["gpu_hours" if machine.startswith("cuda") else "cpu_hours"] += seconds / 3600
    return hours


def _unit_runs(out: Path, unit: Unit) -> list[RunDirectory]:
    search = [RunDirectory(out / "search" / unit.name)] if unit.kind == "searched" else []
    return search + [RunDirectory(out / "augment" / unit.name)]


def grid_hours(out: Path, spec: CompareSpec) -> dict[str, float]:
    """`compute_hours` of every unit of the experiment, finished or not."""
    return compute_hours(*(run for unit in units_of(spec) for run in _unit_runs(out, unit)))


def _genotype_fields(out: Path, unit: Unit, spec: CompareSpec, genotype: Genotype) -> dict[str, Any]:
    """What a unit's genotype is, whether or not it was retrained: its cost at the paper's scale, its blocks per
    cell and, for a search, how its alphas settled and what its budget was."""
    paper_params, paper_flops = _cached_paper_scale_cost(out, unit, genotype, spec)
    row: dict[str, Any] = {
        "name": unit.name, "kind": unit.kind, "space": unit.space, "seed": unit.seed,
        "paper_params": paper_params, "paper_flops": paper_flops,
        "sg_block_edges": genotype.count_op("sg_block"), "inv_res_edges": genotype.count_op("inv_res"),
        "sg_block_normal": sum(op == "sg_block" for op, _ in genotype.normal),
        "sg_block_reduce": sum(op == "sg_block" for op, _ in genotype.reduce),
        "normal_skips": sum(op == "skip_connect" for op, _ in genotype.normal),
    }  # fmt: skip
    if unit.kind == "searched":
        row.update(search_dynamics(RunDirectory(out / "search" / unit.name)))
        row.update(_search_cost(genotype_path(out, unit)))
    return row


def genotype_row(out: Path, unit: Unit, spec: CompareSpec) -> dict[str, Any] | None:
    """The row of a unit whose genotype is final (a search that ran all its epochs; a random or reference genotype
    once written), retrained or not; None before."""
    if unit.kind == "searched" and not search_finished(spec, out, unit):
        return None
    path = genotype_path(out, unit)
    if not path.exists():
        return None
    genotype = load_genotype(str(path))
    row = _genotype_fields(out, unit, spec, genotype)
    row["genotype"] = genotype.to_dict()
    return row


def unit_row(out: Path, unit: Unit, spec: CompareSpec) -> dict[str, Any] | None:
    """The report row of a retrained unit (None while it has not finished)."""
    summary_path = out / "augment" / unit.name / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    genotype = Genotype.from_dict(summary["genotype"])
    row = _genotype_fields(out, unit, spec, genotype)
    row.update(test_acc=summary["test_acc"], params=summary["params"], flops=summary["flops"],
               train_seconds=summary["train_seconds"], latency_ms=summary.get("latency_ms"))  # fmt: skip
    runs = _unit_runs(out, unit)
    row.update(compute_hours(*runs))
    row["machines"] = machines_of(*runs)
    row["genotype"] = genotype.to_dict()
    return row


# ----------------------------------------------------------------------------------------- statistics


def _search_cost(path: Path) -> dict[str, Any]:
    """A searched unit's cost as its search counted it (genotype.json's summary, under --cost) and how it met the budget."""
    try:
        cost = json.loads(path.read_text()).get("summary", {}).get("cost", {})
    except (OSError, ValueError):
        return {}
    return {"search_cost": cost.get("genotype_cost"), "budget_met_by": cost.get("budget_met_by")} if cost else {}


def pareto_front(rows: list[dict], key: str) -> list[dict]:
    """The rows no other row beats on both test accuracy and `key` (a cost): none costs at most as much and is at
    least as accurate, one of the two strictly. Cheapest first; rows without `key` are left out."""
    rows = [r for r in rows if r.get(key) is not None]

    def beaten(r: dict) -> bool:
        return any(o[key] <= r[key] and o["test_acc"] >= r["test_acc"] and (o[key] < r[key] or o["test_acc"] > r["test_acc"])
                   for o in rows)  # fmt: skip

    return sorted((r for r in rows if not beaten(r)), key=lambda r: (r[key], -r["test_acc"]))


def accuracy_vs_cost_png(rows: list[dict], kind: str = "params") -> bytes:
    """Test accuracy against the cost `kind` of every finished unit (one colour per space and kind), the Pareto front marked."""
    from ..plots.figures import figure_png, pareto_figure

    key, label, scale = COST_AXES[kind]
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get(key) is not None:
            group = r["space"].upper() if r["kind"] == "reference" else f"{r['space']} {r['kind']}"
            groups.setdefault(group, []).append((r[key] * scale, 100 * r["test_acc"]))
    front = [(r[key] * scale, 100 * r["test_acc"], r["name"]) for r in pareto_front(rows, key)]
    title = "Test accuracy against cost; dashed: the Pareto front of the finished units (no unit is cheaper and more accurate)"
    return figure_png(pareto_figure(groups, front, label, "CIFAR-10 test accuracy (%)", title))


def entropy_share(row: dict) -> float:
    """A search's final alpha entropy, normal and reduction cell averaged, as a share of the uniform maximum."""
    return (row["entropy_normal"] + row["entropy_reduce"]) / 2 / math.log(len(resolve_space(row["space"])))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_pm(values: Sequence[float], scale: float = 1.0, digits: int = 2, unit: str = "", count: bool = True) -> str:
    """Mean ± sample standard deviation of `values` times `scale`, then `unit`, then (n=N) when `count`; the value
    alone for one, "–" for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0] * scale:.{digits}f}{unit}"
    m, s = mean_std(values)
    text = f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}{unit}"
    return f"{text} (n={len(values)})" if count else text


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float] | None:
    """Mean(a) - mean(b) with its Welch confidence interval and two-sided p-value; None below 2 values per group."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return {"diff": diff, "low": diff, "high": diff, "p": 0.0 if diff else 1.0}
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(level)
    return {"diff": diff, "low": float(interval.low), "high": float(interval.high), "p": float(result.pvalue)}


def ratio_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float] | None:
    """The ratio of the geometric means of positive `a` and `b`, minus 1 (-0.04 = 4% smaller), with the Welch
    interval and p-value of the difference of their logs; None below 2 values per group."""
    result = welch_interval([math.log(v) for v in a], [math.log(v) for v in b], level)
    return None if result is None else {**{k: math.expm1(result[k]) for k in ("diff", "low", "high")}, "p": result["p"]}


def _group(rows: list[dict], kind: str, space: str, key: str) -> list[float]:
    return [float(r[key]) for r in rows if r["kind"] == kind and r["space"] == space]


def reference_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """The reference units by genotype name (one per retraining seed), seeds in order."""
    groups: dict[str, list[dict]] = {}
    for r in sorted((r for r in rows if r["kind"] == "reference"), key=lambda r: r.get("seed", 0)):
        groups.setdefault(r["space"], []).append(r)
    return groups


def _accuracy(group: list[dict], unit: str = "") -> str:
    """A group's test accuracy in points (followed by `unit`): the value for one unit, mean ± std (n) for several."""
    return mean_pm([r["test_acc"] for r in group], 100, unit=unit)


def _searched_or_random(rows: list[dict]) -> list[dict]:
    """The units whose cells came from a space (searched or sampled), leaving out the reference genotypes."""
    return [r for r in rows if r["kind"] in ("searched", "random")]


# ----------------------------------------------------------------------------------------- report files


def _write_table(out: Path, stem: str, rows: list[dict]) -> None:
    """`rows` as STEM.json and STEM.csv (the CSV_COLUMNS a row has)."""
    atomic_write_text(out / f"{stem}.json", json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / f"{stem}.csv", buffer.getvalue())


def write_report(out: Path, rows: list[dict | None], spec: CompareSpec, total_units: int | None = None,
                 genotype_rows: list[dict | None] | None = None) -> None:
    """Write report.md, genotypes.json/.csv (every final genotype, retrained or not), params_by_space.png and the
    cell diagrams; unless the experiment is search-only, also rows.json/.csv (the retrained units),
    accuracy_vs_params.png and accuracy_vs_cost.png."""
    from ..plots.visualize import plot_genotype

    done = [r for r in rows if r is not None]
    genotypes = [r for r in genotype_rows or [] if r is not None]
    _write_table(out, "genotypes", genotypes)
    for r in genotypes + done:
        plot_genotype(Genotype.from_dict(r["genotype"]), out / "cells" / r["name"], quiet=True)
    atomic_write_bytes(out / "params_by_space.png", params_by_space_png(genotypes, spec.spaces))
    total = total_units or len(units_of(spec))
    if spec.search_only:
        report = render_search_markdown(genotypes, spec, total, grid_hours(out, spec))
    else:
        _write_table(out, "rows", done)
        atomic_write_bytes(out / "accuracy_vs_params.png", accuracy_vs_params_png(done, spec.spaces))
        atomic_write_bytes(out / "accuracy_vs_cost.png", accuracy_vs_cost_png(done, _cost_kind(spec)))
        report = render_markdown(done, spec, total, grid_hours(out, spec), genotypes)
    trajectories = alpha_trajectory_pngs(out, genotypes if spec.search_only else done, spec.spaces)
    if trajectories:
        report += "\n## How the alphas settled (the first search of each space)\n\n" + "".join(
            f"![{p.stem}](alphas/{p.name})\n" for p in trajectories
        )
    report += _cells_section(out, genotypes if spec.search_only else done, spec.spaces)
    atomic_write_text(out / "report.md", report)


def _cost_kind(spec: CompareSpec) -> str:
    """The cost the report weighs accuracy against: the searches' --cost, else params."""
    return search_settings(spec).get("cost") or "params"


def _pareto_section(rows: list[dict], spec: CompareSpec) -> list[str]:
    kind = _cost_kind(spec)
    key, label, scale = COST_AXES[kind]
    front = pareto_front(rows, key)
    lines = ["", "## Accuracy against cost", "",
             f"The Pareto front of the finished units on {label} and test accuracy: no other unit is both cheaper and "
             "more accurate.", "", f"| unit | {label} | test acc |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {r['name']} | {_three_significant(r[key] * scale)} | {100 * r['test_acc']:.2f}% |" for r in front]
    return lines + ["", "![test accuracy against cost](accuracy_vs_cost.png)"]


def _three_significant(x: float) -> str:
    """`x` to three significant digits, trailing zeros kept so a column reads evenly (0.280, not 0.28)."""
    if not x:
        return "0"
    rounded = float(f"{x:.2e}")  # rounding first: 0.9996 -> 1.00, not 1.000
    return f"{rounded:.{max(0, 2 - math.floor(math.log10(abs(rounded))))}f}"


def _first_searched(rows: list[dict], space: str) -> dict | None:
    return next((r for r in rows if r["kind"] == "searched" and r["space"] == space), None)


def _cells_section(out: Path, rows: list[dict], spaces: Sequence[str]) -> str:
    """The cell diagrams of the references and of the first finished search of each space, where graphviz drew them."""
    shown = [group[0] for group in reference_groups(rows).values()] + [r for s in spaces if (r := _first_searched(rows, s))]
    images = [f"![{r['name']} {cell}](cells/{r['name']}_{cell}.png)\n" for r in shown for cell in ("normal", "reduce")
              if (out / "cells" / f"{r['name']}_{cell}.png").exists()]  # fmt: skip
    if not images:
        return ""
    return ("\n## The cells (the references and the first search of each space)\n\n" + "".join(images)
            + "\nEvery finished unit's cells are in `cells/` (`<unit>_normal` and `<unit>_reduce`, .png and graphviz .gv).\n")


def accuracy_vs_params_png(rows: list[dict], spaces: Sequence[str]) -> bytes:
    """Test accuracy against params at the retraining scale (log axis): searched, random and reference genotypes,
    each space's searched mean ± std as error bars and, once it can be fitted, the equal-size fit for searched cells."""
    from matplotlib.figure import Figure

    from ..plots.figures import figure_png

    fig = Figure(figsize=(7.2, 4.8), layout="constrained")
    ax = fig.add_subplot()
    colours = dict(zip(spaces, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]))
    for space in spaces:
        colour = colours[space]
        for kind, marker, fill in (("searched", "o", colour), ("random", "s", "none")):
            pts = [(r["params"] / 1e6, 100 * r["test_acc"]) for r in rows if r["kind"] == kind and r["space"] == space]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, facecolors=fill, edgecolors=colour, s=36, label=f"{space} {kind}")
        searched = [(r["params"] / 1e6, 100 * r["test_acc"]) for r in rows if r["kind"] == "searched" and r["space"] == space]
        if len(searched) > 1:
            (px, ps), (ax_, as_) = mean_std([p for p, _ in searched]), mean_std([a for _, a in searched])
            ax.errorbar(px, ax_, xerr=ps, yerr=as_, color=colour, capsize=4, lw=1.5, marker="D", ms=7, mfc="white")
    for name, group in reference_groups(rows).items():
        ax.scatter([r["params"] / 1e6 for r in group], [100 * r["test_acc"] for r in group], marker="*", s=160, color="black",
                   label=name.upper() + (f" ({len(group)} seeds)" if len(group) > 1 else ""))  # fmt: skip
    fit = size_adjusted_differences(rows, spaces)
    for space in spaces:
        sizes = [r["params"] for r in _searched_or_random(rows) if r["space"] == space]
        if fit and sizes:  # the fitted accuracy of a searched cell of this space, over the sizes it reached
            shift = fit["intercept"] + fit["searched"]["diff"] + fit["spaces"].get(space, {"diff": 0.0})["diff"]
            ends = [min(sizes), max(sizes)]
            ax.plot([p / 1e6 for p in ends], [100 * (shift + fit["per_doubling"]["diff"] * math.log2(p)) for p in ends],
                    ls="--", lw=1, color=colours[space], label=f"{space} fit, searched")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter("{x:g}")
    ax.xaxis.set_minor_formatter("{x:g}")
    ax.set_xlabel("parameters at the retraining scale (M, log scale)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title("Searched (filled), random (hollow) and reference cells; diamonds: searched mean ± std"
                 + ("\ndashed: the equal-size fit for searched cells (see the report)" if fit else ""))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8, loc="best")
    return figure_png(fig)


def alpha_trajectory_pngs(out: Path, rows: list[dict], spaces: Sequence[str]) -> list[Path]:
    """The alpha trajectories (normal and reduction cell) of the first finished search of each space,
    drawn again only when that search's alphas.jsonl changed since."""
    from ..plots.figures import alpha_trajectories_figure, save_figure
    from ..plots.visualize import read_alpha_records

    written = []
    for space in spaces:
        first = _first_searched(rows, space)
        if first is None:
            continue
        alphas = out / "search" / first["name"] / "alphas.jsonl"
        for cell in ("normal", "reduce"):
            png = out / "alphas" / f"{first['name']}_{cell}.png"
            if not up_to_date(png, alphas):
                save_figure(alpha_trajectories_figure(read_alpha_records(alphas), cell), png)
            written.append(png)
    return written


def _p_value(p: float) -> str:
    """A p-value to two decimals, or to its first significant digit below 0.01, so that a small one never reads 0.00."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def _ci(result: dict[str, float] | None, scale: float = 100.0, unit: str = "") -> str:
    if result is None:
        return "– (needs 2+ per group)"
    return f"{result['diff'] * scale:+.2f}{unit} [{result['low'] * scale:+.2f}, {result['high'] * scale:+.2f}], {_p_value(result['p'])}"


def _verdict(result: dict[str, float] | None, what: str) -> str:
    if result is None:
        return f"{what}: not enough finished units yet."
    if result["low"] <= 0 <= result["high"]:
        return (f"{what}: {result['diff'] * 100:+.2f} points, 95% CI [{result['low'] * 100:+.2f}, {result['high'] * 100:+.2f}] "
                "contains 0: no difference this experiment can detect.")  # fmt: skip
    sign = "higher" if result["diff"] > 0 else "lower"
    return (f"{what}: {result['diff'] * 100:+.2f} points, 95% CI [{result['low'] * 100:+.2f}, {result['high'] * 100:+.2f}]: "
            f"{sign}, beyond the seed-to-seed noise of this experiment ({_p_value(result['p'])}; uncorrected for the "
            "several comparisons made here).")  # fmt: skip


def _parameter_answer(genotypes: list[dict], spaces: Sequence[str]) -> list[str]:
    """Each space's searched cells against `darts`' in params at the paper's scale: the ratio of the groups'
    geometric means with its interval."""
    lines = []
    base = _group(genotypes, "searched", "darts", "paper_params")
    for space in spaces:
        mine = _group(genotypes, "searched", space, "paper_params")
        if space == "darts" or not mine or not base:
            continue
        paper = PAPER_PARAMS_NOTE.get(space, "the paper gives no figure for this space")
        head = (f"- Parameters at C=36, 20 cells: `{space}` searched cells {mean_pm(mine, 1e-6, unit=' M')} vs `darts` "
                f"{mean_pm(base, 1e-6, unit=' M')}")
        result = ratio_interval(mine, base)
        if result is None:
            ratio = math.exp(statistics.fmean(map(math.log, mine)) - statistics.fmean(map(math.log, base))) - 1
            lines.append(f"{head} ({100 * ratio:+.0f}%; {paper}).")
            continue
        lines.append(f"{head}: {100 * result['diff']:+.0f}% [{100 * result['low']:+.0f}%, {100 * result['high']:+.0f}%], "
                     f"{_p_value(result['p'])} ({paper}; the ratio of the groups' geometric means, with the 95% Welch "
                     "interval of the difference of their log params).")  # fmt: skip
    return lines


def _retraining_noise(rows: list[dict], spec: CompareSpec) -> list[str]:
    """A reference retrained with several seeds: the noise of retraining one cell, against the searched groups' spread."""
    lines = []
    searched = [_group(rows, "searched", space, "test_acc") for space in spec.spaces]
    searched = [g for g in searched if len(g) > 1]
    for name, group in reference_groups(rows).items():
        accs = [r["test_acc"] for r in group]
        if len(accs) < 2:
            continue
        from scipy import stats

        noise, n = statistics.stdev(accs), max(len(spec.seeds), 2)
        half_width = stats.t.ppf(0.975, 2 * n - 2) * noise * math.sqrt(2 / n)
        line = (f"- Retraining noise of one cell: {name.upper()} retrained with {len(accs)} seeds reached "
                f"{_accuracy(group, '%')} (range {100 * min(accs):.2f}-{100 * max(accs):.2f}%); with that noise alone, the "
                f"95% interval of a difference between two groups of {n} would reach about ±{100 * half_width:.2f} points")  # fmt: skip
        if searched and noise > 0:
            dof = sum(len(g) - 1 for g in searched)
            pooled = sum((len(g) - 1) * statistics.variance(g) for g in searched) / dof
            ratio = pooled / noise**2
            p = float(stats.f.sf(ratio, dof, len(accs) - 1))
            line += (f". The searched groups' spread, pooled over the spaces: std {100 * math.sqrt(pooled):.2f} points "
                     f"({dof} degrees of freedom); variance ratio {ratio:.2f}, one-sided F-test {_p_value(p)}: "
                     + ("the searched cells vary more than retraining one cell does, so search noise adds to it."
                        if p < 0.05 else "no more spread than retraining one cell gives, as far as this test can tell."))  # fmt: skip
        lines.append(line + ("" if line.endswith(".") else "."))
    return lines


def _genotypes_section(genotypes: list[dict], spec: CompareSpec) -> list[str]:
    """Per space: the final genotypes' params and FLOPs at the paper's scale, their sandglass blocks, how firmly
    their searches chose; the references below."""
    epochs = SearchConfig(**search_settings(spec)).epochs
    lines = ["", "## The genotypes (params and FLOPs at the paper's scale: C=36, 20 cells, auxiliary head excluded)", "",
             "Every final genotype, retrained or not: a search counts once it has run all its epochs.", "",
             "| space | kind | n | params (M) | MFLOPs | `sg_block` edges normal / reduce | with `sg_block` | "
             "alpha entropy (% of max) | changed in the last epoch |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for space in spec.spaces:
        for kind in ("searched", "random"):
            mine = [r for r in genotypes if r["kind"] == kind and r["space"] == space]
            if not mine:
                continue
            params, flops = [r["paper_params"] for r in mine], [r["paper_flops"] for r in mine]
            normal, reduce = (statistics.fmean(r.get(f"sg_block_{cell}", 0) for r in mine) for cell in ("normal", "reduce"))
            with_sg = sum(r["sg_block_edges"] > 0 for r in mine)
            firm = changed = ""
            if kind == "searched":
                firm = mean_pm([entropy_share(r) for r in mine], 100, 1, count=False)
                changed = f"{sum(r['stable_since_epoch'] >= epochs > 1 for r in mine)} of {len(mine)}"
            size = f"{mean_pm(params, 1e-6, count=False)} | {mean_pm(flops, 1e-6, 0, count=False)}"
            lines.append(f"| {space} | {kind} | {len(mine)} | {size} | {normal:.2f} / {reduce:.2f} | {with_sg} of {len(mine)} | "
                         f"{firm} | {changed} |")  # fmt: skip
    for name, group in reference_groups(genotypes).items():
        r = group[0]
        lines.append(f"| {name.upper()} | reference | 1 | {r['paper_params'] / 1e6:.2f} | {r['paper_flops'] / 1e6:.0f} | "
                     f"{r.get('sg_block_normal', 0)} / {r.get('sg_block_reduce', 0)} | | | |")  # fmt: skip
    return lines + ["", "The paper: DARTS cells 3.3M params; sandglass cells about 25% fewer (~2.5M, derived). Alpha entropy: "
                    "the mean of the normal and reduction cells' after the last epoch, as a share of ln(number of ops).", "",
                    "![params per space](params_by_space.png)"]  # fmt: skip


def params_by_space_png(genotypes: list[dict], spaces: Sequence[str]) -> bytes:
    """The params at the paper's scale of every final genotype, one column per space: searched (filled) and random
    (hollow) genotypes, each group's mean with its 95% t-interval, the references as horizontal lines."""
    from matplotlib.figure import Figure
    from scipy import stats

    from ..plots.figures import figure_png

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for x, space in enumerate(spaces):
        for kind, offset, fill in (("searched", -0.15, "tab:blue"), ("random", 0.2, "none")):
            values = [r["paper_params"] / 1e6 for r in genotypes if r["kind"] == kind and r["space"] == space]
            if not values:
                continue
            spread = [offset + 0.12 * ((k * 0.618) % 1 - 0.5) for k in range(len(values))]  # fixed jitter: same figure every time
            ax.scatter([x + d for d in spread], values, facecolors=fill, edgecolors="tab:blue", s=28, zorder=3,
                       label=None if kind in labelled else kind)  # fmt: skip
            labelled.add(kind)
            if len(values) > 2:  # the interval of two values is too wide to draw usefully
                mean, std = mean_std(values)
                half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
                ax.errorbar([x + offset + 0.1], [mean], yerr=[half], color="black", capsize=4, marker="D", ms=5, zorder=4)
    tops = [r["paper_params"] / 1e6 for r in genotypes]
    for name, group in reference_groups(genotypes).items():
        ax.axhline(group[0]["paper_params"] / 1e6, color="grey", ls=":", lw=1)
        ax.annotate(name.upper(), (len(spaces) - 0.45, group[0]["paper_params"] / 1e6), fontsize=8, color="grey", va="bottom", ha="right")
    ax.set_ylim(0, 1.12 * max(tops, default=1.0))
    ax.set_xticks(range(len(spaces)), spaces)
    ax.set_xlim(-0.6, len(spaces) - 0.4)
    ax.set_ylabel("parameters at C=36, 20 cells (M)")
    ax.set_title("Each genotype's params (searched: filled, random: hollow);\nblack: the group's mean and its 95% interval (3 or more genotypes)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    if labelled:
        ax.legend(fontsize=8, loc="best")
    return figure_png(fig)


def render_search_markdown(genotypes: list[dict], spec: CompareSpec, total_units: int, hours: dict[str, float] | None = None) -> str:
    """The report of a search-only experiment: status, answer on params and firmness, protocol, genotypes, every search."""
    s_cfg = SearchConfig(**search_settings(spec))
    alpha_steps = (s_cfg.subset or 25000) // s_cfg.batch_size * s_cfg.epochs
    lines = ["# Which cells do the searches find? (searches only, nothing retrained)", "",
             f"Status: {len(genotypes)} of {total_units} units finished (preset `{spec.preset}`).",
             *_compute_line([], hours or {}), "", "## Answer (from the finished searches)", "",
             *_parameter_answer(genotypes, spec.spaces), *_search_firmness(genotypes, spec, s_cfg, alpha_steps), "",
             f"The paper's claim: {PAPER_CLAIM}", "", "## Protocol", "", *_search_protocol(spec, s_cfg, alpha_steps),
             "- Differences: mean difference with its 95% Welch confidence interval and p-value."]  # fmt: skip
    lines += _genotypes_section(genotypes, spec)
    lines += ["", "## Every genotype", "",
              "| unit | params C=36/20 | MFLOPs C=36/20 | sg_block normal / reduce | inv_res | skips (normal) | search val acc | "
              "stable since epoch | entropy normal / reduce | search s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in genotypes:
        search = (f"{100 * r['search_val_acc']:.2f}% | {r['stable_since_epoch']} | {r['entropy_normal']:.3f} / "
                  f"{r['entropy_reduce']:.3f} | {r['search_seconds']:.0f}" if r["kind"] == "searched" else "| | |")  # fmt: skip
        lines.append(f"| {r['name']} | {r['paper_params'] / 1e6:.2f} M | {r['paper_flops'] / 1e6:.0f} | {r['sg_block_normal']} / "
                     f"{r['sg_block_reduce']} | {r['inv_res_edges']} | {r['normal_skips']} | {search} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _search_firmness(rows: list[dict], spec: CompareSpec, s_cfg: SearchConfig, alpha_steps: int) -> list[str]:
    """How far the searches' alphas moved from uniform, and whether their genotypes had settled."""
    searched = [r for r in rows if r["kind"] == "searched"]
    if not searched:
        return []
    per_space = []
    for space in spec.spaces:
        mine = [entropy_share(r) for r in searched if r["space"] == space]
        if mine:
            per_space.append(f"`{space}` {100 * statistics.fmean(mine):.1f}% (n={len(mine)})")
    moving = sum(r["stable_since_epoch"] >= s_cfg.epochs > 1 for r in searched)
    mean_share = statistics.fmean(entropy_share(r) for r in searched)
    if mean_share > 0.9:
        verdict = ("The alphas stayed close to uniform, so the derived cells rest on small differences between alphas: "
                   "'searched' here means the outcome of a short search, not of a converged one.")  # fmt: skip
    elif 2 * moving > len(searched):
        verdict = "Most genotypes were still changing at the end: longer searches could derive other cells."
    else:
        verdict = "The alphas moved well away from uniform and most genotypes had settled."
    return [f"- How firmly the searches chose ({alpha_steps} alpha steps each): alpha entropy after the last epoch, "
            f"as a share of the uniform maximum, {', '.join(per_space)}; {moving} of {len(searched)} searches changed "
            f"their derived genotype in the last epoch. {verdict}"]  # fmt: skip


def size_association(rows: list[dict]) -> dict[str, float] | None:
    """Spearman rank correlation of the finished units' params (as retrained) with their test accuracy;
    None below 4 units or when either does not vary."""
    params, accs = [float(r["params"]) for r in rows], [float(r["test_acc"]) for r in rows]
    if len(rows) < 4 or len(set(params)) < 2 or len(set(accs)) < 2:
        return None
    from scipy import stats

    result = stats.spearmanr(params, accs)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": len(rows)}


def _size_effect(rows: list[dict]) -> list[str]:
    """Whether bigger cells reached higher accuracy: a space whose searches pick bigger cells can win by size."""
    found = size_association(rows)
    if found is None:
        return []
    head = (f"- Size: across the {found['n']} finished units, params (as retrained) against test accuracy: "
            f"Spearman rank correlation {found['rho']:+.2f}, {_p_value(found['p'])}")  # fmt: skip
    if found["p"] < 0.05:
        return [f"{head}: the bigger cells reached {'higher' if found['rho'] > 0 else 'lower'} accuracy, so part of "
                "a space's difference may come from the size of the cells its searches picked rather than from "
                "their structure (compare the parameter lines above)."]  # fmt: skip
    return [f"{head}: no link between size and accuracy this experiment can detect; a size effect of the "
            "order of the differences above is not ruled out."]  # fmt: skip


def size_adjusted_differences(rows: list[dict], spaces: Sequence[str]) -> dict[str, Any] | None:
    """Each space's test accuracy against `darts` at equal size: an ordinary least-squares fit, over the searched
    and random units, of test accuracy on log2(params as retrained), whether the cell was searched, and the space.

    Returns the fit's n and intercept, its slope per doubling of params, searched minus random cells and, per space,
    the difference to `darts`, each with its 95% confidence interval and p-value (fractions, like `welch_interval`);
    None while the units cannot identify the fit.
    """
    units = _searched_or_random(rows)
    others = [s for s in spaces if s != "darts" and any(r["space"] == s for r in units)]
    if not others or not any(r["space"] == "darts" for r in units):
        return None
    import numpy as np
    import statsmodels.api as sm

    design = np.array([[1.0, math.log2(r["params"]), r["kind"] == "searched", *(r["space"] == s for s in others)]
                       for r in units], dtype=float)  # fmt: skip
    if len(units) < design.shape[1] + 2 or np.linalg.matrix_rank(design) < design.shape[1]:
        return None  # fewer than two residual degrees of freedom, or searched and random not both present
    fit = sm.OLS(np.array([float(r["test_acc"]) for r in units]), design).fit()
    bounds = fit.conf_int(0.05)
    term = lambda i: {"diff": float(fit.params[i]), "low": float(bounds[i][0]), "high": float(bounds[i][1]),  # noqa: E731
                      "p": float(fit.pvalues[i])}  # fmt: skip
    return {"n": len(units), "intercept": float(fit.params[0]), "per_doubling": term(1), "searched": term(2),
            "spaces": {s: term(3 + i) for i, s in enumerate(others)}}  # fmt: skip


def _at_equal_size(rows: list[dict], spaces: Sequence[str]) -> list[str]:
    """The space differences once the size of the cells is accounted for: does a space win by structure or by size?"""
    found = size_adjusted_differences(rows, spaces)
    if found is None:
        return []
    slope = found["per_doubling"]
    lines = [f"- {_verdict(result, f'`{space}` vs `darts` at equal size')}" for space, result in found["spaces"].items()]
    lines.append(f"- {_verdict(found['searched'], 'Searched vs random cells at equal size, all spaces')}")
    lines.append(f"- Equal size means: a least-squares fit over the {found['n']} searched and random units of test accuracy on "
                 f"log2(params as retrained), searched or random, and the space. Each doubling of params went with "
                 f"{100 * slope['diff']:+.2f} points [{100 * slope['low']:+.2f}, {100 * slope['high']:+.2f}]. The fit "
                 "assumes one size slope and one search effect for every space, and the spaces' sizes overlap only "
                 "in part, so these lines are a check on the size effect, not a size-matched experiment.")  # fmt: skip
    return lines


def _scale_caveat(rows: list[dict], t_cfg: AugmentConfig) -> list[str]:
    """The retraining scale next to the paper's: what the accuracy differences can speak for."""
    name, group = next(iter(reference_groups(rows).items()), (None, []))
    reached = f" ({name.upper()}: {_accuracy(group, '%')})" if group else ""
    return [f"- Scale: every cell was retrained for {t_cfg.epochs} epochs at C={t_cfg.init_channels}, {t_cfg.layers} cells"
            f"{reached}, not the paper's {PAPER_TRAINING}. Which cell trains best in a short schedule need not be "
            "which does after a full one: the accuracy differences above hold for this scale only. The parameter "
            "counts are properties of the genotypes, given at the paper's scale."]  # fmt: skip


def _search_protocol(spec: CompareSpec, s_cfg: SearchConfig, alpha_steps: int) -> list[str]:
    """The protocol's lines on the searches, the random genotypes and the references."""
    budget = ""
    if s_cfg.cost:
        target = f", target {s_cfg.cost_target:g} {COST_UNITS[s_cfg.cost][1]}" if s_cfg.cost_target is not None else ""
        budget = (f" Under a budget: --cost {s_cfg.cost}, weight {s_cfg.cost_weight}{target} (the cost of the network at "
                  f"C={s_cfg.cost_channels}, {s_cfg.cost_layers} cells).")  # fmt: skip
    seeds = f" seeds {', '.join(map(str, spec.reference_seeds))}" if spec.references and spec.reference_seeds != [0] else ""
    return [
        f"- Search ({'first' if s_cfg.order == 1 else 'second'}-order DARTS): {s_cfg.layers} cells, C={s_cfg.init_channels}, "
        f"{s_cfg.nodes} nodes, {s_cfg.subset or 25000} + {s_cfg.subset or 25000} images (weights / alphas), batch "
        f"{s_cfg.batch_size}, {s_cfg.epochs} epochs = {alpha_steps} alpha steps; weight lr {s_cfg.w_lr} cosine to "
        f"{s_cfg.w_lr_min}, alpha lr {s_cfg.alpha_lr} (Adam, weight decay {s_cfg.alpha_weight_decay}), seeds "
        f"{', '.join(map(str, spec.seeds))}.{budget}",
        f"- Random baselines: {spec.random} genotypes per space, drawn uniformly (2 distinct inputs per node, ops without `none`).",
        f"- References: {', '.join(n.upper() for n in spec.references) or 'none'}{seeds}.",
    ]  # fmt: skip


def _compute_line(rows: list[dict], hours: dict[str, float]) -> list[str]:
    """What the grid cost so far: GPU-hours and CPU-hours of every unit, finished or in progress."""
    kinds = (("gpu_hours", "GPU-hours"), ("cpu_hours", "CPU process-hours"))
    spent = [f"{hours[key]:.1f} {what}" for key, what in kinds if hours.get(key)]
    if not spent:
        return []
    finished = [f"{total:.1f} {what}" for key, what in kinds if (total := sum(r.get(key, 0) for r in rows))]
    of_finished = f"; the retrained units: {' and '.join(finished)}" if finished else ""
    return ["", f"Compute so far: {' and '.join(spent)} (the epochs' wall-clock time times the processes that ran "
            f"them, units in progress included{of_finished})."]  # fmt: skip


def render_markdown(rows: list[dict], spec: CompareSpec, total_units: int, hours: dict[str, float] | None = None,
                    genotypes: list[dict] | None = None) -> str:
    """The report: status, compute spent, answer, protocol, per-space tables, every unit, figures. `rows` are the
    retrained units, `genotypes` every final genotype (finished searches whose retraining may not have)."""
    genotypes = rows if genotypes is None else genotypes
    s_cfg, t_cfg = SearchConfig(**search_settings(spec)), AugmentConfig(**augment_settings(spec))
    alpha_steps = (s_cfg.subset or 25000) // s_cfg.batch_size * s_cfg.epochs
    acc = lambda kind, space: _group(rows, kind, space, "test_acc")  # noqa: E731
    lines = [
        "# Does the sandglass block make DARTS find better cells?",
        "",
        f"Status: {len(rows)} of {total_units} units finished (preset `{spec.preset}`).",
        *_compute_line(rows, hours or {}),
        "",
        "## Answer (from the finished units)",
        "",
    ]
    for space in spec.spaces:
        if space != "darts":
            lines.append(f"- {_verdict(welch_interval(acc('searched', space), acc('searched', 'darts')), f'`{space}` vs `darts`, searched cells')}")
    for space in spec.spaces:
        if spec.random:
            lines.append(f"- {_verdict(welch_interval(acc('searched', space), acc('random', space)), f'`{space}`, searched vs random cells')}")
    lines += _parameter_answer(genotypes, spec.spaces) + _retraining_noise(rows, spec)
    lines += _size_effect(rows) + _at_equal_size(rows, spec.spaces)
    lines += _search_firmness(genotypes, spec, s_cfg, alpha_steps) + _scale_caveat(rows, t_cfg)
    lines += [
        "",
        f"The paper's claim: {PAPER_CLAIM}",
        "",
        "## Protocol",
        "",
        *_search_protocol(spec, s_cfg, alpha_steps),
        f"- Retraining, the same for every genotype: {t_cfg.layers} cells, C={t_cfg.init_channels}, "
        f"{t_cfg.train_subset or 50000} training images, batch {t_cfg.batch_size}, {t_cfg.epochs} epochs, SGD lr {t_cfg.lr} cosine to 0, "
        f"cutout {t_cfg.cutout}, drop path {t_cfg.drop_path}, auxiliary weight {t_cfg.auxiliary_weight}; "
        f"test accuracy on {t_cfg.test_subset or 10000} test images after the last epoch; seed = the search seed (random genotype r: seed r).",
        "- Differences: mean difference in test accuracy (points) with its 95% Welch confidence interval and p-value.",
        "",
        "## Test accuracy per space (%)",
        "",
        "| space | searched | random | searched − random | searched − darts searched |",
        "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for space in spec.spaces:
        versus = _ci(welch_interval(acc("searched", space), acc("searched", "darts"))) if space != "darts" else ""
        lines.append(f"| {space} | {mean_pm(acc('searched', space), 100)} | {mean_pm(acc('random', space), 100)} | "
                     f"{_ci(welch_interval(acc('searched', space), acc('random', space)))} | {versus} |")  # fmt: skip
    for name, group in reference_groups(rows).items():
        lines.append(f"| {name.upper()} (reference) | {_accuracy(group)} | | | |")
    lines += _genotypes_section(genotypes, spec)
    lines += ["", "## Every unit", "",
              "| unit | test acc | params | MFLOPs | params C=36/20 | sg_block | inv_res | skips (normal) | search val acc | "
              "alpha steps | stable since epoch | entropy normal / reduce | search s | retrain s | GPU h | ran on |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        search = (f"{100 * r['search_val_acc']:.2f}% | {r['alpha_steps']} | {r['stable_since_epoch']} | "
                  f"{r['entropy_normal']:.3f} / {r['entropy_reduce']:.3f} | {r['search_seconds']:.0f}"
                  if r["kind"] == "searched" else "| | | |")  # fmt: skip
        lines.append(f"| {r['name']} | {100 * r['test_acc']:.2f}% | {r['params']:,} | {r['flops'] / 1e6:.1f} | "
                     f"{r['paper_params'] / 1e6:.2f} M | {r['sg_block_edges']} | {r['inv_res_edges']} | {r['normal_skips']} | "
                     f"{search} | {r['train_seconds']:.0f} | {r.get('gpu_hours', 0):.2f} | {r.get('machines', 'not recorded')} |")  # fmt: skip
    maxima = ", ".join(f"{math.log(len(resolve_space(space))):.3f} for `{space}`" for space in spec.spaces)
    lines += ["", "Entropy: mean over edges of the entropy (nats) of softmax(alpha) after the last epoch; uniform "
              f"weights give the maximum, ln(number of ops): {maxima}. "
              "Stable since: the first epoch from which the derived genotype no longer changed. Seconds are wall-clock "
              "time (they include any time the run was paused, and run slower beside another unit under --jobs). Ran on: the machines recorded in the unit's metrics, "
              "epoch by epoch (older lines did not record one). GPU h: the unit's epochs on GPUs, wall-clock hours times GPUs.", "",
              "![test accuracy against params](accuracy_vs_params.png)"]  # fmt: skip
    lines += _pareto_section(rows, spec) + [""]
    return "\n".join(lines) + "\n"
