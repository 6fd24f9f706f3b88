"""The search-space comparison: search and retrain in each space with each seed, then report.

Every (space, seed) pair has a search run and a retraining run under the output folder. The
experiment resumes: finished pairs are skipped, interrupted runs continue from their
checkpoints. The report (Markdown, JSON, CSV, a PNG plot and the cell diagrams) is rebuilt from
whatever has finished, after every pair.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from .augment import AUGMENT_PRESETS, AugmentConfig, run_augment
from .errors import UserError
from .genotype import load_genotype
from .io import atomic_write_bytes, atomic_write_text
from .ops import resolve_space
from .runs import RunDirectory
from .search import SEARCH_PRESETS, SearchConfig, run_search

__all__ = ["COMPARE_SCALES", "CompareSpec", "parse_overrides", "run_compare", "search_settings", "train_settings", "write_report"]

PAPER_CLAIM = (
    "MobileNeXt (Zhou et al., ECCV 2020) reports that adding the sandglass block to the DARTS space gives cells with "
    "about 25% fewer parameters and higher CIFAR-10 accuracy (+0.13% top-1), while adding the inverted residual "
    "block lowers accuracy."
)


@dataclass
class CompareSpec:
    """What to compare and at which scale."""

    spaces: list[str]
    seeds: list[int]
    preset: str = "quick"
    search_overrides: dict[str, Any] | None = None
    train_overrides: dict[str, Any] | None = None
    data_root: str | None = None


def parse_overrides(items: tuple[str, ...] | list[str], cls) -> dict[str, Any]:
    """Turn KEY=VALUE strings into typed config overrides for `cls` (SearchConfig or AugmentConfig)."""
    types = {f.name: f.type for f in fields(cls)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise UserError(f"bad override {item!r}: use KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        kind = str(types[key])
        try:
            if "bool" in kind:
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif "int" in kind:
                out[key] = int(value)
            elif "float" in kind:
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise UserError(f"bad override {item!r}: {value!r} is not a valid {kind}") from None
    return out


# What each preset changes for a comparison, on top of the search and retraining presets: the
# quick comparison (9 pairs) is scaled to about two hours on a 2-core CPU.
COMPARE_SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"search": {}, "train": {}},
    "quick": {"search": {"epochs": 4, "subset": 640}, "train": {"epochs": 2, "train_subset": 6000}},
    "smoke": {"search": {}, "train": {}},
}


def search_settings(spec: CompareSpec) -> dict[str, Any]:
    """The search settings of every pair: preset, then the comparison's scale, then the overrides."""
    return {**SEARCH_PRESETS[spec.preset], **COMPARE_SCALES[spec.preset]["search"], **(spec.search_overrides or {})}


def train_settings(spec: CompareSpec) -> dict[str, Any]:
    """The retraining settings of every pair: preset, then the comparison's scale, then the overrides."""
    return {**AUGMENT_PRESETS[spec.preset], **COMPARE_SCALES[spec.preset]["train"], **(spec.train_overrides or {})}


def _search_config(spec: CompareSpec, space: str, seed: int) -> SearchConfig:
    return SearchConfig(**{**search_settings(spec), "ops": space, "seed": seed}, data_root=spec.data_root)


def _train_config(spec: CompareSpec, genotype_path: Path, seed: int) -> AugmentConfig:
    return AugmentConfig(**{**train_settings(spec), "genotype": str(genotype_path), "seed": seed}, data_root=spec.data_root)


def _completed_epochs(run: RunDirectory) -> int:
    return len(run.read_metrics())


def run_pair(spec: CompareSpec, out: Path, space: str, seed: int, progress: bool = False) -> dict[str, Any]:
    """Search and retrain one (space, seed) pair, resuming whatever was started; return its row."""
    name = f"{space}-s{seed}"
    search_run = RunDirectory(out / "search" / name)
    search_config = _search_config(spec, space, seed)
    if not search_run.exists():
        run_search(search_config, str(search_run.path), progress=progress)
    elif _completed_epochs(search_run) < search_config.epochs or not (search_run.path / "genotype.json").exists():
        run_search(search_config, str(search_run.path), resume=True, progress=progress)
    genotype_path = search_run.path / "genotype.json"
    train_run = RunDirectory(out / "augment" / name)
    train_config = _train_config(spec, genotype_path, seed)
    summary_path = train_run.path / "summary.json"
    if not summary_path.exists():
        run_augment(train_config, str(train_run.path), resume=train_run.exists(), progress=progress)
    return pair_row(out, space, seed)


def pair_row(out: Path, space: str, seed: int) -> dict[str, Any] | None:
    """The report row of a finished pair (None if it has not finished)."""
    name = f"{space}-s{seed}"
    search_run = RunDirectory(out / "search" / name)
    summary_path = out / "augment" / name / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    search_metrics = search_run.read_metrics()
    genotype = load_genotype(str(search_run.path / "genotype.json"))
    return {
        "space": space,
        "seed": seed,
        "search_val_acc": search_metrics[-1]["val_acc"],
        "params": summary["params"],
        "flops": summary["flops"],
        "test_acc": summary["test_acc"],
        "search_seconds": sum(m.get("train_seconds", 0) + m.get("eval_seconds", 0) for m in search_metrics),
        "train_seconds": summary["train_seconds"],
        "sg_block_edges": genotype.count_op("sg_block"),
        "inv_res_edges": genotype.count_op("inv_res"),
        "genotype": genotype.to_dict(),
    }


def run_compare(spec: CompareSpec, out: str | Path, progress: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Run every (space, seed) pair (resuming), rewriting the report after each; return the rows."""
    for space in spec.spaces:
        resolve_space(space)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "compare.json"
    spec_record = {"spaces": spec.spaces, "seeds": spec.seeds, "preset": spec.preset,
                   "search_overrides": spec.search_overrides or {}, "train_overrides": spec.train_overrides or {},
                   "search": search_settings(spec), "train": train_settings(spec)}  # fmt: skip
    if spec_path.exists():
        stored = json.loads(spec_path.read_text())
        stored_spec = CompareSpec(stored["spaces"], stored["seeds"], stored["preset"], stored.get("search_overrides"),
                                  stored.get("train_overrides"))  # fmt: skip
        for key, settings in (("search", search_settings), ("train", train_settings)):
            before, now = settings(stored_spec), spec_record[key]
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            if changed:
                raise UserError(f"{out} holds a comparison with other {key} settings ({', '.join(changed)}); use another --out")
    atomic_write_text(spec_path, json.dumps(spec_record, indent=2) + "\n")
    rows = []
    for seed in spec.seeds:
        for space in spec.spaces:
            row = pair_row(out, space, seed)
            if row is None:
                log(f"compare: {space} seed {seed}: search and retrain")
                row = run_pair(spec, out, space, seed, progress)
            else:
                log(f"compare: {space} seed {seed}: finished earlier")
            rows.append(row)
            write_report(out, rows, spec)
    return rows


# ----------------------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(rows: list[dict]) -> list[dict]:
    """Per-space mean and standard deviation of the main figures."""
    out = []
    for space in dict.fromkeys(r["space"] for r in rows):
        group = [r for r in rows if r["space"] == space]
        entry = {"space": space, "pairs": len(group)}
        for key in ("search_val_acc", "params", "flops", "test_acc", "search_seconds", "train_seconds"):
            entry[key] = _mean_std([float(r[key]) for r in group])
        out.append(entry)
    return out


def write_report(out: Path, rows: list[dict], spec: CompareSpec) -> None:
    """Write report.md, rows.json, rows.csv, accuracy_vs_params.png and the cell diagrams."""
    from .visualize import plot_genotype, scatter_plot

    atomic_write_text(out / "rows.json", json.dumps(rows, indent=2) + "\n")
    columns = ["space", "seed", "search_val_acc", "params", "flops", "test_acc", "search_seconds", "train_seconds",
               "sg_block_edges", "inv_res_edges"]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "rows.csv", buffer.getvalue())
    for r in rows:
        plot_genotype(load_genotype(json.dumps(r["genotype"])), out / "cells" / f"{r['space']}-s{r['seed']}", quiet=True)
    png = scatter_plot(
        {space: [(r["params"] / 1e6, 100 * r["test_acc"]) for r in rows if r["space"] == space] for space in spec.spaces},
        x_label="params (M)", y_label="test accuracy (%)", title="CIFAR-10: test accuracy vs parameters",
    )  # fmt: skip
    atomic_write_bytes(out / "accuracy_vs_params.png", png)
    atomic_write_text(out / "report.md", render_markdown(rows, spec))


def render_markdown(rows: list[dict], spec: CompareSpec) -> str:
    s_cfg, t_cfg = SearchConfig(**search_settings(spec)), AugmentConfig(**train_settings(spec))
    lines = [
        "# Search-space comparison: darts vs invres vs sgblock",
        "",
        f"Scale (preset `{spec.preset}`): search with {s_cfg.layers} cells, C={s_cfg.init_channels}, {s_cfg.nodes} nodes, "
        f"{s_cfg.subset or 25000} images per half, batch {s_cfg.batch_size}, {s_cfg.epochs} epochs, order {s_cfg.order}; "
        f"retraining with {t_cfg.layers} cells, C={t_cfg.init_channels}, {t_cfg.train_subset or 50000} training images, "
        f"batch {t_cfg.batch_size}, {t_cfg.epochs} epochs, tested on {t_cfg.test_subset or 10000} test images.",
        "",
        "| space | seed | search val acc | params | MFLOPs | test acc | search s | retrain s | sg_block edges | inv_res edges |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['space']} | {r['seed']} | {100 * r['search_val_acc']:.2f}% | {r['params']:,} | {r['flops'] / 1e6:.1f} | "
            f"{100 * r['test_acc']:.2f}% | {r['search_seconds']:.0f} | {r['train_seconds']:.0f} | {r['sg_block_edges']} | {r['inv_res_edges']} |"
        )
    lines += ["", "Per space (mean ± std over seeds; the last two columns against the `darts` space's means):", "",
              "| space | pairs | search val acc | params | MFLOPs | test acc | params vs darts | test acc vs darts |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    summary = summarise(rows)
    base = next((e for e in summary if e["space"] == "darts"), None)
    for e in summary:
        va, pa, fl, ta = e["search_val_acc"], e["params"], e["flops"], e["test_acc"]
        versus = (f"{100 * (pa[0] / base['params'][0] - 1):+.1f}% | {100 * (ta[0] - base['test_acc'][0]):+.2f} points"
                  if base else "n/a | n/a")  # fmt: skip
        lines.append(
            f"| {e['space']} | {e['pairs']} | {100 * va[0]:.2f} ± {100 * va[1]:.2f}% | {pa[0] / 1e6:.3f} ± {pa[1] / 1e6:.3f} M | "
            f"{fl[0] / 1e6:.1f} ± {fl[1] / 1e6:.1f} | {100 * ta[0]:.2f} ± {100 * ta[1]:.2f}% | {versus} |"
        )
    lines += ["", f"The paper's claim: {PAPER_CLAIM}", "", "![test accuracy against params](accuracy_vs_params.png)", ""]
    return "\n".join(lines) + "\n"
