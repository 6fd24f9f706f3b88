"""One acceleration switch on and off, the two steps alternated in one process: does it pay at these shapes?

    python benchmarks/ab_switch.py lean_blocks --genotype results/compare-medium/search/invres-s0/genotype.json
    python benchmarks/ab_switch.py lean_blocks --space sgblock            # a first-order search step instead

Builds the same model twice under the CPU policy (`darts_sg.speed.accelerate.device_policy`), once with
the switch on and once off, and times their training steps in turns after a warm-up step each,
so that drifts of the machine's speed hit both alike. With --genotype: a retraining step of that
genotype (default: the `medium` comparison's scale, C=16, 8 cells, batch 96, auxiliary head);
otherwise a first-order search step of --space at the DARTS settings (steps.build_step).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

import darts_sg
from darts_sg.speed.accelerate import Acceleration, accelerate, device_policy
from darts_sg.utils.allocator import loaded_allocator, relaunch_with_tcmalloc
from darts_sg.model.genotype import load_genotype

from bench_steps import DEFAULTS, cpu_line
from steps import build_step


def retrain_step(genotype: str, policy: Acceleration, C: int, layers: int, batch: int):
    """One SGD step of the genotype's network on a fixed random batch, as a closure."""
    torch.manual_seed(0)
    model = darts_sg.build_network(load_genotype(genotype), C=C, layers=layers, num_classes=10, auxiliary=True)
    model = accelerate(model, torch.device("cpu"), policy)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits, logits_aux = model.forward_with_aux(x)
        (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(logits_aux, y)).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("switch", help="a field of darts_sg.speed.accelerate.Acceleration, e.g. lean_blocks")
    parser.add_argument("--genotype", help="time a retraining step of this genotype (a name or a JSON file)")
    parser.add_argument("--space", default="sgblock", help="without --genotype: the search space of a first-order step")
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    relaunch_with_tcmalloc()  # as the jobs run (darts_sg.utils.allocator)
    torch.set_num_threads(2)
    print(f"{cpu_line()}; torch {torch.__version__}, 2 threads, allocator: {loaded_allocator()}")
    steps = {}
    for on in (True, False):
        if args.genotype:
            policy = dataclasses.replace(device_policy("cpu"), **{args.switch: on})
            steps[on] = retrain_step(args.genotype, policy, args.C, args.layers, args.batch)
        else:
            steps[on], _ = build_step("search-fo", {**DEFAULTS, args.switch: on}, args.space)
        steps[on]()  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.turns):
        for on in (True, False):
            start = time.perf_counter()
            steps[on]()
            times[on].append(time.perf_counter() - start)
    what = f"retraining {args.genotype} (C={args.C}, {args.layers} cells, batch {args.batch})" if args.genotype else f"search-fo {args.space}"
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{what}: {args.switch} on {[round(t, 3) for t in times[True]]} s, off {[round(t, 3) for t in times[False]]} s; "
          f"medians {on:.3f} / {off:.3f} s, on/off {on / off:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
