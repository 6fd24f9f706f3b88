"""Units side by side: does `darts-sg compare --jobs N` train more images per second than one process?

Times the comparison's steps (compare_cost.py: a search step per space asked for, a retraining
step of a genotype, at a comparison scale) in turns: one process with all N threads, then N
processes with one thread each, started together. Prints seconds per step of every process and
the images per second of the whole machine in each turn, with the CPU line. Run it on an
otherwise idle machine (pause a running comparison with kill -STOP).

    python benchmarks/bench_parallel_units.py
    python benchmarks/bench_parallel_units.py --genotype results/compare-medium/search/invres-s0/genotype.json --spaces sgblock

On a GPU (`darts-sg compare --units-per-gpu K`): K search units at the DARTS settings (C=16, 8 cells,
batch 64, the device's policy, fp32; steps.build_step) on one GPU at once, for K = 1, 2, 4.
Each process builds its step and warms up, then all start together and step for --seconds;
prints images/s of each unit and of all together, against one unit alone, and the peak memory
of each. About 90 s in all on one GPU (--budget stops it there, printing what it measured):

    python benchmarks/bench_parallel_units.py --device cuda
    python benchmarks/bench_parallel_units.py --device cuda --kind search-so --space sgblock --units 1,2,4 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def worker(kind: str, threads: int, steps: int, scale: str, genotype: str) -> None:
    """One timing process: print {"seconds": median s/step, "batch": images per step} as JSON."""
    from darts_sg.utils.allocator import relaunch_with_tcmalloc

    relaunch_with_tcmalloc()  # as the jobs run
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from darts_sg.train.config import AugmentConfig
    from darts_sg.experiment.compare import CompareSpec, augment_settings, search_settings
    from darts_sg.train.config import SearchConfig

    from compare_cost import augment_step, median_seconds, search_step

    spec = CompareSpec.for_preset(scale)
    if kind == "augment":
        config = AugmentConfig(**augment_settings(spec))
        step = augment_step(config, genotype)
    else:
        config = SearchConfig(**{**search_settings(spec), "ops": kind.removeprefix("search-")})
        step = search_step(config)
    print(json.dumps({"seconds": median_seconds(step, 1, steps), "batch": config.batch_size}), flush=True)


def turn(kind: str, jobs: int, threads: int, args) -> list[dict]:
    """`jobs` timing processes of `threads` threads each, started together; their results."""
    cmd = [sys.executable, __file__, "--worker", kind, "--threads", str(threads), "--steps", str(args.steps),
           "--scale", args.scale, "--genotype", args.genotype]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE) for _ in range(jobs)]
    return _results(procs, "a timing process")


def _results(procs: list[subprocess.Popen], what: str) -> list[dict]:
    """The JSON each process printed last, once all have ended; SystemExit naming `what` when one failed."""
    results = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{what} failed (exit code {proc.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def gpu_worker(kind: str, space: str, seconds: float, warmup: int) -> None:
    """One unit on the GPU: build and warm up, say `ready`, wait for `go` on stdin, step for `seconds`; print JSON."""
    torch.manual_seed(0)
    from steps import build_step

    step, images = build_step(kind, {"amp": "off", "compile": False}, space, device="cuda")
    for _ in range(warmup):  # cudnn.benchmark picks its algorithms here
        step()
    torch.cuda.synchronize()
    print("ready", flush=True)
    sys.stdin.readline()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(json.dumps({"images_per_s": steps * images / elapsed, "steps": steps, "gpu": torch.cuda.get_device_name(),
                      "peak_gb": torch.cuda.max_memory_allocated() / 2**30}), flush=True)  # fmt: skip


class BudgetSpent(Exception):
    """--budget seconds have passed."""


def gpu_turn(units: int, args) -> list[dict]:
    """`units` GPU workers started together; their results."""
    cmd = [sys.executable, __file__, "--worker", "gpu", "--kind", args.kind, "--space", args.space,
           "--seconds", str(args.seconds), "--warmup", str(args.warmup)]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE) for _ in range(units)]
    try:
        for proc in procs:  # every unit built and warmed up before any is timed
            while (line := proc.stdout.readline()) and line.strip() != "ready":
                pass
            if not line:
                raise SystemExit("a GPU unit stopped before its first timed step (its error is above)")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return _results(procs, "a GPU unit")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def gpu_table(args) -> None:
    """Images/s of K search units sharing one GPU, for each K of --units (stopped after --budget seconds)."""
    import signal

    if not torch.cuda.is_available():
        raise SystemExit("bench_parallel_units.py --device cuda: no CUDA device here")

    def spent(signum, frame):
        raise BudgetSpent

    signal.signal(signal.SIGALRM, spent)
    signal.alarm(max(1, int(args.budget)))
    print(f"torch {torch.__version__}; {args.kind} steps, {args.space} space, DARTS settings (C=16, 8 cells, batch 64), fp32; "
          f"{args.warmup} warm-up steps, then {args.seconds:g} s of steps with all units running")  # fmt: skip
    print("\n| units on one GPU | images/s of each unit | images/s, all units | x one unit alone | peak GPU memory per unit (GB) |")
    print("|---:|---|---:|---:|---:|", flush=True)
    alone, gpu = None, "?"
    for units in (int(k) for k in args.units.split(",")):
        try:
            results = gpu_turn(units, args)
        except BudgetSpent:
            print(f"| {units} | the budget of {args.budget:g} s was spent before this turn ended | | | |", flush=True)
            break
        total, gpu = sum(r["images_per_s"] for r in results), results[0]["gpu"]
        alone = alone or (total if units == 1 else None)
        ratio = f"{total / alone:.2f}x" if alone else ""
        each = ", ".join(f"{r['images_per_s']:.0f}" for r in results)
        print(f"| {units} | {each} | {total:.0f} | {ratio} | {max(r['peak_gb'] for r in results):.2f} |", flush=True)
    signal.alarm(0)
    print(f"\nGPU: {gpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--spaces", default="sgblock", help="comma-separated spaces whose search step is timed")
    parser.add_argument("--genotype", default="darts_v2", help="the genotype whose retraining step is timed")
    parser.add_argument("--scale", default="medium", help="a comparison scale (darts_sg.experiment.plan.COMPARE_SCALES)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: K units on one GPU (see above)")
    parser.add_argument("--units", default="1,2,4", help="--device cuda: the unit counts K, one turn each")
    parser.add_argument("--kind", choices=["search-fo", "search-so"], default="search-fo", help="--device cuda: first or second order")
    parser.add_argument("--space", default="darts", help="--device cuda: the search space")
    parser.add_argument("--seconds", type=float, default=8.0, help="--device cuda: timed seconds per turn")
    parser.add_argument("--warmup", type=int, default=3, help="--device cuda: warm-up steps per unit")
    parser.add_argument("--budget", type=float, default=90.0, help="--device cuda: stop after this many seconds in all")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if Path(args.genotype).is_file():
        args.genotype = str(Path(args.genotype).resolve())  # the timing processes run in benchmarks/
    if args.worker == "gpu":
        return gpu_worker(args.kind, args.space, args.seconds, args.warmup)
    if args.worker:
        return worker(args.worker, args.threads, args.steps, args.scale, args.genotype)
    if args.device == "cuda":
        return gpu_table(args)

    from bench_steps import cpu_line

    print(f"{cpu_line()}; torch {torch.__version__}; scale `{args.scale}`, median of {args.steps} steps per process")
    print(f"\n| step | turn | 1 process x {args.jobs} threads: s/step | {args.jobs} processes x 1 thread: s/step each | "
          "images/s, 1 process | images/s, all processes | ratio |")  # fmt: skip
    print("|---|---:|---:|---|---:|---:|---:|")
    kinds = [f"search-{space}" for space in args.spaces.split(",") if space] + ["augment"]
    for kind in kinds:
        label = f"retrain {Path(args.genotype).parent.name or args.genotype}" if kind == "augment" else kind.replace("-", " ")
        ratios = []
        for k in range(1, args.turns + 1):
            (one,) = turn(kind, 1, args.jobs, args)
            many = turn(kind, args.jobs, 1, args)
            alone = one["batch"] / one["seconds"]
            together = sum(r["batch"] / r["seconds"] for r in many)
            ratios.append(together / alone)
            each = ", ".join(f"{r['seconds']:.3f}" for r in many)
            print(f"| {label} | {k} | {one['seconds']:.3f} | {each} | "
                  f"{alone:.1f} | {together:.1f} | {together / alone:.2f}x |", flush=True)  # fmt: skip
        print(f"| {label} | median | | | | | **{statistics.median(ratios):.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
