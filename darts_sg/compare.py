"""Running the search-space comparison (see compare_plan.py for its units and scales).

Units run in an interleaved order (the references, then seed 0 of every space, random genotype 0
of every space, seed 1, ...) so that a partly finished experiment is balanced. The experiment
resumes unit by unit: finished units are skipped, an interrupted run continues from its
checkpoint, and a run folder left without a checkpoint (a copy of committed results) starts
again. The report (compare_report.py) is rebuilt from whatever has finished after every unit.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .compare_plan import (
    COMPARE_SCALES, CompareSpec, Unit, genotype_path, parse_overrides, search_config, search_settings, augment_settings,
    units_of,
)  # fmt: skip
from .compare_parallel import report_lock, run_in_parallel, unit_claim
from .compare_report import unit_row, write_report
from .errors import UserError
from .genotype import load_genotype, random_genotype
from .io import atomic_write_text
from .ops import resolve_space
from .run_setup import RUNTIME_KEYS
from .runs import RunDirectory
from .search import run_search
from .augment import AugmentConfig, run_augment

__all__ = ["COMPARE_SCALES", "CompareSpec", "Unit", "parse_overrides", "run_compare", "run_unit", "run_units",
           "search_settings", "augment_settings", "units_of", "write_current_report"]  # fmt: skip


def _restartable(run: RunDirectory) -> bool:
    """True when `run` exists but cannot be resumed (no checkpoint: e.g. a copy of committed results)."""
    return run.exists() and not run.checkpoint_path.exists()


def _run_search(spec: CompareSpec, out: Path, unit: Unit, progress: bool) -> None:
    run = RunDirectory(out / "search" / unit.name)
    config = search_config(spec, unit.space, unit.seed)
    if (run.path / "genotype.json").exists() and len(run.read_metrics()) >= config.epochs:
        return
    if _restartable(run):
        shutil.rmtree(run.path)
    run_search(config, str(run.path), resume=run.exists(), progress=progress)


def _write_unit_genotype(spec: CompareSpec, out: Path, unit: Unit) -> None:
    if unit.kind == "random":
        steps = search_settings(spec).get("nodes", 4)
        genotype = random_genotype(resolve_space(unit.space), steps, seed=f"{unit.space}-{unit.seed}")
    else:
        genotype = load_genotype(unit.space)
    path = genotype_path(out, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, genotype.to_json() + "\n")


def run_unit(spec: CompareSpec, out: Path, unit: Unit, progress: bool = False) -> None:
    """Search (searched units) and retrain one unit, resuming whatever was started."""
    if unit.kind == "searched":
        _run_search(spec, out, unit, progress)
    else:
        _write_unit_genotype(spec, out, unit)
    run = RunDirectory(out / "augment" / unit.name)
    if (run.path / "summary.json").exists():
        return
    if _restartable(run):
        shutil.rmtree(run.path)
    config = AugmentConfig(**{**augment_settings(spec), "genotype": str(genotype_path(out, unit)), "seed": unit.seed},
                         data_root=spec.data_root)  # fmt: skip
    run_augment(config, str(run.path), resume=run.exists(), progress=progress)


def unit_finished(out: Path, unit: Unit) -> bool:
    return (out / "augment" / unit.name / "summary.json").exists()


def _spec_record(spec: CompareSpec) -> dict[str, Any]:
    record = asdict(spec)
    record.pop("data_root")
    record.update(search=search_settings(spec), augment=augment_settings(spec))
    return record


def _check_settings(path: Path, now: dict[str, Any]) -> None:
    """Refuse to continue an experiment whose recorded settings differ from the ones asked for now
    (run-time settings such as --threads or --figures may change, as for a single run)."""
    stored = json.loads(path.read_text())
    for key in ("search", "augment"):
        before, after = stored.get(key, {}), now[key]
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and k not in RUNTIME_KEYS)
        if changed:
            raise UserError(f"{path.parent} holds a comparison with other {key} settings ({', '.join(changed)}); use another --out")


def write_current_report(spec: CompareSpec, out: Path) -> list[dict | None]:
    """Rebuild the report from every unit finished so far; return the rows (None: unit not finished)."""
    units = units_of(spec)
    rows = [unit_row(out, unit, spec) for unit in units]
    write_report(out, rows, spec, total_units=len(units))
    return rows


def run_compare(spec: CompareSpec, out: str | Path, progress: bool = False, log: Callable[[str], None] = print,
                report_only: bool = False, jobs: int = 1) -> list[dict | None]:
    """Run every unit (resuming), rewriting the report after each; return the rows (None: unit not finished).

    With `report_only`, nothing runs: the report is rebuilt from the units that have finished.
    With `jobs` above 1, the units run in that many worker processes at once (compare_parallel.py).
    """
    for space in spec.spaces:
        resolve_space(space)
    for name in spec.references:
        load_genotype(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "compare.json"
    record = _spec_record(spec)
    if spec_path.exists():
        _check_settings(spec_path, record)
    atomic_write_text(spec_path, json.dumps(record, indent=2) + "\n")
    if report_only:
        units = units_of(spec)
        for k, unit in enumerate(units, 1):
            log(f"compare: unit {k}/{len(units)} {unit.name}: {'finished' if unit_finished(out, unit) else 'not finished'}")
    elif jobs > 1:
        run_in_parallel(run_units, spec, out, jobs, log)
    else:
        run_units(spec, out, log, progress)
    with report_lock(out):
        return write_current_report(spec, out)


def run_units(spec: CompareSpec, out: Path, log: Callable[[str], None], progress: bool = False) -> None:
    """Run, in this process, every unit that has not finished and that no other process has claimed."""
    units = units_of(spec)
    for k, unit in enumerate(units, 1):
        if unit_finished(out, unit):
            log(f"compare: unit {k}/{len(units)} {unit.name}: finished earlier")
            continue
        with unit_claim(out, unit) as claimed:
            if not claimed:
                log(f"compare: unit {k}/{len(units)} {unit.name}: running in another process")
                continue
            if unit_finished(out, unit):  # finished by another process since the check above
                continue
            log(f"compare: unit {k}/{len(units)} {unit.name}: {'search and ' if unit.kind == 'searched' else ''}retrain")
            run_unit(spec, out, unit, progress)
        with report_lock(out):
            write_current_report(spec, out)
