"""Units side by side: does `darts-sg compare --jobs N` train more images per second than one process?

Times the comparison's steps (compare_cost.py: a search step per space asked for, a retraining
step of a genotype, at a comparison scale) in turns: one process with all N threads, then N
processes with one thread each, started together. Prints seconds per step of every process and
the images per second of the whole machine in each turn, with the CPU line. Run it on an
otherwise idle machine (pause a running comparison with kill -STOP).

    python benchmarks/bench_parallel_units.py
    python benchmarks/bench_parallel_units.py --genotype results/compare-medium/search/invres-s0/genotype.json --spaces sgblock
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def worker(kind: str, threads: int, steps: int, scale: str, genotype: str) -> None:
    """One timing process: print {"seconds": median s/step, "batch": images per step} as JSON."""
    from darts_sg.allocator import relaunch_with_tcmalloc

    relaunch_with_tcmalloc()  # as the jobs run
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from darts_sg.augment import AugmentConfig
    from darts_sg.compare import CompareSpec, augment_settings, search_settings
    from darts_sg.search import SearchConfig

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
    results = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a timing process failed (exit code {proc.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--spaces", default="sgblock", help="comma-separated spaces whose search step is timed")
    parser.add_argument("--genotype", default="darts_v2", help="the genotype whose retraining step is timed")
    parser.add_argument("--scale", default="medium", help="a comparison scale (darts_sg.compare_plan.COMPARE_SCALES)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if Path(args.genotype).is_file():
        args.genotype = str(Path(args.genotype).resolve())  # the timing processes run in benchmarks/
    if args.worker:
        return worker(args.worker, args.threads, args.steps, args.scale, args.genotype)

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
