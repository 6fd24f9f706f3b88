"""Running the search-space comparison (see plan.py for its units and scales).

Units run in an interleaved order (the references, then seed 0 of every space, random genotype 0
of every space, seed 1, ...) so that a partly finished experiment is balanced. The experiment
resumes unit by unit: finished units are skipped, an interrupted run continues from its
checkpoint, and a run folder left without a checkpoint (a copy of committed results) starts
again. The report (report.py) is rebuilt from whatever has finished after every unit.

Any scheduler can run the units one by one: `unit_states` lists them (done, running or waiting) and
`run_named_unit` runs one of them, under torchrun or a multi-task Slurm job as well (rank 0 claims
the unit and decides what to resume; every process trains). `slurm.py` submits them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .plan import (
    COMPARE_SCALES, CompareSpec, Unit, genotype_path, parse_overrides, search_config, search_finished, search_settings,
    augment_settings, unit_finished, units_of,
)  # fmt: skip
from ..jobs.augment import run_augment
from ..jobs.search import run_search
from ..model.genotype import load_genotype, random_genotype
from ..model.ops import resolve_space
from ..train.config import AugmentConfig, SearchConfig
from ..train.launch import RUNTIME_KEYS
from ..train.rundir import RunDirectory
from ..utils.distributed import from_main, init_from_environment, is_main_process
from ..utils.errors import UserError
from ..utils.io import atomic_write_text
from .parallel import claim_holder, report_lock, run_in_parallel, this_process, unit_claim, visible_gpus, worker_gpus
from .report import genotype_row, unit_row, write_report

__all__ = ["COMPARE_SCALES", "CompareSpec", "Unit", "find_unit", "parse_overrides", "prepare_experiment", "run_compare",
           "run_named_unit", "run_unit", "run_units", "search_settings", "augment_settings", "unit_finished", "unit_states",
           "units_of", "write_current_report"]  # fmt: skip


def _restartable(run: RunDirectory) -> bool:
    """True when `run` exists but cannot be resumed (no checkpoint: e.g. a copy of committed results)."""
    return run.exists() and not run.checkpoint_path.exists()


def _resumable(run: RunDirectory) -> bool:
    """Remove `run` when it cannot be resumed; whether a run is left to resume."""
    if _restartable(run):
        shutil.rmtree(run.path)
    return run.exists()


def _runtime_settings(spec: CompareSpec, overrides: dict[str, Any] | None) -> set[str]:
    """The run-time settings (threads, device, ...) the comparison sets: a resumed run takes them too, not the
    ones stored when it started (a unit started under --jobs 2 and resumed by one process must not keep its
    thread count unset, i.e. every core)."""
    return {key for key in overrides or {} if key in RUNTIME_KEYS} | ({"data_root"} if spec.data_root else set())


def _run_search(spec: CompareSpec, out: Path, unit: Unit, progress: bool) -> None:
    run = RunDirectory(out / "search" / unit.name)
    config = search_config(spec, unit.space, unit.seed)
    if from_main(lambda: search_finished(spec, out, unit)):
        return
    run_search(config, str(run.path), resume=from_main(lambda: _resumable(run)), progress=progress,
               explicit=_runtime_settings(spec, spec.search_overrides))  # fmt: skip


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
    """Search (searched units) and retrain one unit (not in a search-only experiment), resuming whatever was started.

    Under torchrun every process calls it: rank 0 decides what is resumed and writes the files."""
    if unit.kind == "searched":
        _run_search(spec, out, unit, progress)
    elif is_main_process():
        _write_unit_genotype(spec, out, unit)
    if spec.search_only:
        return
    run = RunDirectory(out / "augment" / unit.name)
    if from_main(lambda: (run.path / "summary.json").exists()):
        return
    config = AugmentConfig(**{**augment_settings(spec), "genotype": str(genotype_path(out, unit)), "seed": unit.seed},
                         data_root=spec.data_root)  # fmt: skip
    run_augment(config, str(run.path), resume=from_main(lambda: _resumable(run)), progress=progress,
                explicit=_runtime_settings(spec, spec.augment_overrides))  # fmt: skip


def _what_runs(spec: CompareSpec, unit: Unit) -> str:
    if spec.search_only:
        return "search" if unit.kind == "searched" else "genotype only"
    return f"{'search and ' if unit.kind == 'searched' else ''}retrain"


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


def prepare_experiment(spec: CompareSpec, out: str | Path, write: bool = True) -> Path:
    """Check the spec (spaces, reference genotypes) and that `out` holds no comparison with other settings;
    with `write`, create `out` and record the settings in compare.json. Returns `out` as a Path."""
    for space in spec.spaces:
        resolve_space(space)
    for name in spec.references:
        load_genotype(name)
    out = Path(out)
    spec_path = out / "compare.json"
    record = _spec_record(spec)
    if spec_path.exists():
        _check_settings(spec_path, record)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(spec_path, json.dumps(record, indent=2) + "\n")
    return out


def find_unit(spec: CompareSpec, key: str) -> tuple[int, Unit]:
    """The unit named `key`, or numbered `key` (1-based, in running order as `--list-units` shows): (number, unit)."""
    units = units_of(spec)
    if key.strip().isdigit():
        number = int(key)
        if not 1 <= number <= len(units):
            raise UserError(f"no unit number {number}: this comparison has units 1 to {len(units)} (see --list-units)")
        return number, units[number - 1]
    for number, unit in enumerate(units, 1):
        if unit.name == key.strip().lower():
            return number, unit
    raise UserError(f"no unit {key!r} in this comparison; its units: {', '.join(u.name for u in units)}")


def _unit_started(out: Path, unit: Unit) -> bool:
    return (out / "search" / unit.name).exists() or (out / "augment" / unit.name).exists()


def unit_states(spec: CompareSpec, out: str | Path) -> list[dict[str, Any]]:
    """Every unit in running order: number, name, kind, space, seed, state (done, running or waiting), whether it
    has started (a waiting unit then resumes from its checkpoint) and, while running, where (host, GPU, job)."""
    out = Path(out)
    states = []
    for number, unit in enumerate(units_of(spec), 1):
        done = unit_finished(spec, out, unit)
        holder = None if done else claim_holder(out, unit)
        state = {"number": number, "name": unit.name, "kind": unit.kind, "space": unit.space, "seed": unit.seed,
                 "state": "done" if done else "running" if holder else "waiting", "started": _unit_started(out, unit)}  # fmt: skip
        if holder:
            state["where"] = holder
        states.append(state)
    return states


def _rebuild_report(spec: CompareSpec, out: Path) -> list[dict | None]:
    with report_lock(out):
        return write_current_report(spec, out)


def run_named_unit(spec: CompareSpec, out: str | Path, key: str, log: Callable[[str], None] = print,
                   progress: bool = False) -> bool:
    """Run the unit named or numbered `key` (`find_unit`) unless another process holds it, then rebuild the report.

    Returns False when another process holds the unit (nothing done). Under torchrun, or in a Slurm job of
    several tasks, every process calls it and trains; rank 0 claims the unit, logs and writes the report."""
    number, unit = find_unit(spec, key)
    label = f"compare: unit {number}/{len(units_of(spec))} {unit.name}"
    search_device, augment_device = _devices(spec)
    init_from_environment(search_device if unit.kind == "searched" else augment_device)
    main = is_main_process()
    out = prepare_experiment(spec, out, write=main)
    with unit_claim(out, unit) if main else contextlib.nullcontext(True) as claimed:
        state = from_main(lambda: "finished" if unit_finished(spec, out, unit) else "run" if claimed else claim_holder(out, unit) or "taken")
        if main:
            log({"finished": f"{label}: finished earlier",
                 "run": f"{label}: {_what_runs(spec, unit)} on {this_process()}"}.get(
                state, f"{label}: running in another process ({state}); nothing to do"))  # fmt: skip
        if state == "run":
            run_unit(spec, out, unit, progress)
        elif state != "finished":
            return False
    if main:
        _rebuild_report(spec, out)
    return True


def write_current_report(spec: CompareSpec, out: Path) -> list[dict | None]:
    """Rebuild the report from every unit finished so far; return the rows of the retrained units (in a search-only
    experiment: of the final genotypes), None for a unit not finished."""
    units = units_of(spec)
    genotypes = [genotype_row(out, unit, spec) for unit in units]
    rows = [None if spec.search_only else unit_row(out, unit, spec) for unit in units]
    write_report(out, rows, spec, total_units=len(units), genotype_rows=genotypes)
    return genotypes if spec.search_only else rows


def _devices(spec: CompareSpec) -> list[str]:
    """The device settings of the experiment's searches and retrainings (auto, cpu or cuda)."""
    return [SearchConfig(**search_settings(spec)).device, AugmentConfig(**augment_settings(spec)).device]


def run_compare(spec: CompareSpec, out: str | Path, progress: bool = False, log: Callable[[str], None] = print,
                report_only: bool = False, jobs: int | None = None, units_per_gpu: int | None = None) -> list[dict | None]:
    """Run every unit (resuming), rewriting the report after each; return the rows (None: unit not finished).

    With `report_only`, nothing runs: the report is rebuilt from the units that have finished.
    With `jobs` above 1, the units run in that many worker processes at once (parallel.py). On a
    machine with GPUs the workers spread over them: by default one per GPU, or `units_per_gpu` on each.
    """
    out = prepare_experiment(spec, out)
    if report_only:
        units = units_of(spec)
        for k, unit in enumerate(units, 1):
            log(f"compare: unit {k}/{len(units)} {unit.name}: {'finished' if unit_finished(spec, out, unit) else 'not finished'}")
        return _rebuild_report(spec, out)
    gpus = worker_gpus(jobs, units_per_gpu, visible_gpus(_devices(spec)))
    if len(gpus) > 1:
        run_in_parallel(run_units, spec, out, gpus, log)
    else:
        run_units(spec, out, log, progress)
    return _rebuild_report(spec, out)


def run_units(spec: CompareSpec, out: Path, log: Callable[[str], None], progress: bool = False) -> None:
    """Run, in this process, every unit that has not finished and that no other process has claimed."""
    units = units_of(spec)
    for k, unit in enumerate(units, 1):
        if unit_finished(spec, out, unit):
            log(f"compare: unit {k}/{len(units)} {unit.name}: finished earlier")
            continue
        with unit_claim(out, unit) as claimed:
            if not claimed:
                log(f"compare: unit {k}/{len(units)} {unit.name}: running in another process")
                continue
            if unit_finished(spec, out, unit):  # finished by another process since the check above
                continue
            log(f"compare: unit {k}/{len(units)} {unit.name}: {_what_runs(spec, unit)}")
            run_unit(spec, out, unit, progress)
        _rebuild_report(spec, out)
