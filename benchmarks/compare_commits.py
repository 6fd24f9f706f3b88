"""Step time of two commits side by side: does a change make a step faster?

Checks both commits out as temporary git worktrees and times the same step (each commit's own
`build_step` at its defaults) alternately in fresh processes, under tcmalloc where it is installed
(as the jobs run), so that drifts of the machine's speed hit both alike; prints each commit's
times and the ratio of medians.

    python benchmarks/compare_commits.py e693450 HEAD --kind search-fo --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from darts_sg.utils.allocator import relaunch_with_tcmalloc
from steps import STEP_KINDS  # this folder

ROOT = Path(__file__).resolve().parents[1]

TIME_ONE = """
import sys, time, torch
sys.path.insert(0, {bench!r})
from bench_steps import DEFAULTS
try:
    from steps import build_step
except ImportError:  # commits before benchmarks/steps.py kept it in bench_steps.py
    from bench_steps import build_step
torch.set_num_threads(2); torch.manual_seed(0)
step, _ = build_step({kind!r}, DEFAULTS, {space!r}, batch_size={batch})
step()
times = []
for _ in range({steps}):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
print(sorted(times)[len(times) // 2])
"""


def time_commit(tree: Path, args) -> float:
    """Median step time of the package in `tree` (one fresh process)."""
    code = TIME_ONE.format(bench=str(tree / "benchmarks"), kind=args.kind, space=args.space, batch=args.batch_size, steps=args.steps)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"timing {tree.name} failed:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    relaunch_with_tcmalloc()  # the jobs' allocator, inherited by every timing process
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--kind", choices=STEP_KINDS, default="search-fo")
    parser.add_argument("--space", default="darts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per commit, alternating")
    args = parser.parse_args()
    times: dict[str, list[float]] = {args.before: [], args.after: []}
    with tempfile.TemporaryDirectory() as scratch:
        trees = {}
        for rev in times:
            trees[rev] = Path(scratch) / rev.replace("/", "_")
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(trees[rev]), rev], check=True)
        try:
            for _ in range(args.rounds):
                for rev in times:
                    times[rev].append(time_commit(trees[rev], args))
                    print(f"{rev}: {times[rev][-1]:.3f} s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    before, after = (statistics.median(times[rev]) for rev in times)
    print(f"{args.kind} ({args.space}, batch {args.batch_size}): {args.before} {before:.3f} s, "
          f"{args.after} {after:.3f} s per step; ratio {before / after:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
