"""The plan of a search-space comparison: its scales, its units and the settings every unit runs with.

An experiment is a list of units, each retrained under the same protocol:

- ``searched``: a search in a space with a seed, then the retraining of its genotype (``<space>-s<seed>``);
- ``random``: a genotype drawn uniformly from a space (Li & Talwalkar 2019), retrained (``<space>-random<r>``);
- ``reference``: a published genotype such as DARTS_V2, retrained once per reference seed (its name; with a
  seed other than 0, ``<name>-s<seed>``): the retraining noise of one cell.

A search-only experiment retrains nothing: its units end with their genotypes, whose costs the report compares.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..train.config import AUGMENT_PRESETS, SEARCH_PRESETS, SearchConfig
from ..train.rundir import RunDirectory
from ..utils.errors import UserError

__all__ = ["COMPARE_SCALES", "CompareSpec", "Unit", "genotype_path", "parse_overrides", "search_config", "search_finished",
           "search_settings", "augment_settings", "unit_finished", "units_of"]  # fmt: skip


# What each scale sets on top of the search and retraining presets of the same name.
COMPARE_SCALES: dict[str, dict[str, Any]] = {
    "paper": {"search": {}, "augment": {}},
    # The pipeline's smoke test at about two hours for 9 pairs on a 2-core CPU (results/compare-quick).
    "quick": {"search": {"epochs": 4, "subset": 640}, "augment": {"epochs": 2, "train_subset": 6000}},
    # The comparison that answers the question on a 2-core CPU in about 40 hours (results/compare-medium; README).
    # Search: 5 cells, C=8, 4 nodes, 5,000 + 5,000 images, batch 32, 7 epochs = 1,092 alpha steps.
    # DARTS makes ~19,500 Adam steps at lr 3e-4 (a budget of lr x steps = 5.9) and PC-DARTS ~3,400
    # at 6e-4 (2.0); 3e-3 x 1,092 = 3.3 lies between them, so the alphas can move as far as in the
    # published searches although the supernet sees far fewer images.
    # Retraining: C=16, 8 cells, the full 50k training set, batch 96, 10 epochs (DARTS_V2 must reach
    # 88%; with 8 epochs it reached 87.30%: results/darts_v2-medium-8-epochs), SGD lr 0.05 cosine to 0,
    # auxiliary head 0.4; no cutout and no drop path: in 10 epochs the network underfits, where these
    # regularisers cost accuracy. Cost: 19.9 h of steps at DARTS_V2's retraining step (python
    # benchmarks/compare_cost.py), ~40 h at the retraining costs of the cells searched so far (README).
    "medium": {
        "search": {"layers": 5, "init_channels": 8, "nodes": 4, "subset": 5000, "batch_size": 32, "epochs": 7,
                   "alpha_lr": 3e-3, "order": 1},
        "augment": {"layers": 8, "init_channels": 16, "batch_size": 96, "epochs": 10, "lr": 0.05, "cutout": 0,
                  "drop_path": 0.0, "auxiliary_weight": 0.4, "train_subset": 0, "test_subset": 0},
        "seeds": [0, 1, 2, 3], "random": 3, "references": ["darts_v2"],
    },  # fmt: skip
    "smoke": {"search": {}, "augment": {}},
}


@dataclass
class CompareSpec:
    """What to compare and at which scale."""

    spaces: list[str]
    seeds: list[int]
    preset: str = "quick"
    search_overrides: dict[str, Any] | None = None
    augment_overrides: dict[str, Any] | None = None
    data_root: str | None = None
    random: int = 0  # random genotypes per space
    references: list[str] = field(default_factory=list)  # published genotypes retrained beside them
    reference_seeds: list[int] = field(default_factory=lambda: [0])  # each reference is retrained once per seed
    search_only: bool = False  # searches only: genotypes and their costs, nothing retrained

    @classmethod
    def for_preset(cls, preset: str, **given: Any) -> "CompareSpec":
        """A spec whose seeds, random count and references default to the scale's own (None = default)."""
        scale = COMPARE_SCALES[preset]
        defaults = {"spaces": ["darts", "invres", "sgblock"], "seeds": scale.get("seeds", [0, 1, 2]),
                    "random": scale.get("random", 0), "references": scale.get("references", [])}  # fmt: skip
        values = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        return cls(preset=preset, **values)


@dataclass(frozen=True)
class Unit:
    """One retrained genotype of the experiment (and, for `searched`, the search that found it)."""

    kind: str  # "searched", "random" or "reference"
    space: str  # the search space; a reference's own name
    seed: int  # search and retraining seed; the index of a random genotype

    @property
    def name(self) -> str:
        if self.kind == "reference":  # seed 0 keeps the plain name of the experiments that retrained a reference once
            return self.space if self.seed == 0 else f"{self.space}-s{self.seed}"
        return {"searched": f"{self.space}-s{self.seed}", "random": f"{self.space}-random{self.seed}"}[self.kind]


def units_of(spec: CompareSpec) -> list[Unit]:
    """Every unit of the experiment in running order: references (each with its seeds), then rounds of searched
    and random genotypes."""
    units = [Unit("reference", name.lower(), seed) for name in spec.references for seed in spec.reference_seeds]
    for round_ in range(max(len(spec.seeds), spec.random)):
        if round_ < len(spec.seeds):
            units += [Unit("searched", space, spec.seeds[round_]) for space in spec.spaces]
        if round_ < spec.random:
            units += [Unit("random", space, round_) for space in spec.spaces]
    return units


def parse_overrides(items: tuple[str, ...] | list[str], cls) -> dict[str, Any]:
    """Turn KEY=VALUE strings into typed config overrides for `cls` (SearchConfig or AugmentConfig)."""
    types = {f.name: f.type for f in fields(cls) if f.name not in NOT_OVERRIDES}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key in NOT_OVERRIDES:
            raise UserError(f"bad override {item!r}: {key} is not a setting shared by the units; {NOT_OVERRIDES[key]}")
        if not sep or key not in types:
            raise UserError(f"bad override {item!r}: use KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        kind = str(types[key])
        try:
            if "bool" in kind:
                out[key] = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}[value.lower()]
            elif "int" in kind:
                out[key] = int(value)
            elif "float" in kind:
                out[key] = float(value)
                if not math.isfinite(out[key]):
                    raise ValueError
            else:
                out[key] = value
        except (ValueError, KeyError):
            raise UserError(f"bad override {item!r}: {value!r} is not a valid {kind}{' (a finite number)' if 'float' in kind else ''}") from None
    return out


# Config fields that the comparison sets itself, per unit or from its own options.
NOT_OVERRIDES = {
    "data_root": "give it as --data-root",
    "genotype": "each unit retrains its own genotype",
    "seed": "give the seeds as --seeds",
}


def search_settings(spec: CompareSpec) -> dict[str, Any]:
    """The search settings of every unit: preset, then the comparison's scale, then the overrides."""
    return {**SEARCH_PRESETS.get(spec.preset, {}), **COMPARE_SCALES[spec.preset]["search"], **(spec.search_overrides or {})}


def augment_settings(spec: CompareSpec) -> dict[str, Any]:
    """The retraining settings of every unit: preset, then the comparison's scale, then the overrides."""
    return {**AUGMENT_PRESETS.get(spec.preset, {}), **COMPARE_SCALES[spec.preset]["augment"], **(spec.augment_overrides or {})}


def search_config(spec: CompareSpec, space: str, seed: int) -> SearchConfig:
    """The configuration of a searched unit's search."""
    return SearchConfig(**{**search_settings(spec), "ops": space, "seed": seed}, data_root=spec.data_root)


def genotype_path(out: Path, unit: Unit) -> Path:
    """Where a unit's genotype is (searched: the search's result) or will be written (random, reference: one file
    for all the seeds of a reference)."""
    if unit.kind == "searched":
        return out / "search" / unit.name / "genotype.json"
    return out / "genotypes" / f"{unit.space if unit.kind == 'reference' else unit.name}.json"


def search_finished(spec: CompareSpec, out: Path, unit: Unit) -> bool:
    """Whether a searched unit's search has run all its epochs (its genotype.json is then final)."""
    run = RunDirectory(out / "search" / unit.name)
    return (run.path / "genotype.json").exists() and len(run.read_metrics()) >= search_config(spec, unit.space, unit.seed).epochs


def unit_finished(spec: CompareSpec, out: Path, unit: Unit) -> bool:
    """Whether a unit has nothing left to run: retrained, or in a search-only experiment, its genotype final."""
    if not spec.search_only:
        return (out / "augment" / unit.name / "summary.json").exists()
    return search_finished(spec, out, unit) if unit.kind == "searched" else genotype_path(out, unit).exists()
