"""Where the time of one step goes: torch profiler table of a step at the current defaults.

    python benchmarks/profile_step.py                    # first-order search step, batch 32
    python benchmarks/profile_step.py --kind retrain --batch-size 48

Prints the operators by self CPU time (profiler overhead inflates the total; read shares).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_steps import DEFAULTS, build_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["search-fo", "search-so", "retrain"], default="search-fo")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--space", default="darts")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    step, images = build_step(args.kind, DEFAULTS, args.space, batch_size=args.batch_size)
    step()  # warm-up
    start = time.perf_counter()
    step()
    print(f"{args.kind}, batch {images}: {time.perf_counter() - start:.2f} s per step without the profiler")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
