"""A training process beside busy cores: how its torch thread count decides its speed.

Times the forward pass of a small sgblock supernet (C=8, 3 cells, 4 images; training mode) in a
fresh process per row, with torch on 1 thread and on every core: on an idle CPU, beside a process
that keeps one core busy, and beside one such process per core (as a second job, a test run or a
benchmark beside a training run does).
With OMP_WAIT_POLICY=PASSIVE, libgomp's waiting threads sleep instead of spinning.

    python benchmarks/bench_busy_core.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

from bench_steps import cpu_line

WORKER = """
import json, sys, time, torch
from darts_sg import build_supernet
from darts_sg.speed.accelerate import accelerate, device_policy
torch.manual_seed(0)
model = accelerate(build_supernet("sgblock", C=8, layers=3), torch.device("cpu"), device_policy("cpu"))
x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
model(x)  # warm-up
times = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    model(x)
    times.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "times": times}))
"""


@contextmanager
def busy_cores(count: int):
    """`count` processes, each spinning on a core, while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def forward_seconds(threads: int, steps: int, passive: bool) -> tuple[int, float]:
    """(torch threads, median seconds per forward pass) in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    result = subprocess.run([sys.executable, "-c", WORKER, str(steps)], env=env, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout)
    return record["threads"], statistics.median(record["times"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed forward passes per row (median)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(cpu_line())
    print("\n| other load | torch threads | OMP_WAIT_POLICY | s per forward (median) |\n|---|---|---|---|")
    for busy in sorted({0, 1, cores}):
        with busy_cores(busy):
            for threads, passive in ((1, False), (cores, False), (cores, True)):
                used, seconds = forward_seconds(threads, args.steps, passive)
                load = f"{busy} of {cores} cores busy"
                print(f"| {load} | {used} | {'PASSIVE' if passive else 'default'} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
