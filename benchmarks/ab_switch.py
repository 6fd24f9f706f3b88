"""One acceleration switch on and off, the two steps alternated in one process: does it pay at these shapes?

    python benchmarks/ab_switch.py lean_blocks --genotype results/compare-medium/search/invres-s0/genotype.json
    python benchmarks/ab_switch.py lean_blocks --space sgblock            # a first-order search step instead
    python benchmarks/ab_switch.py wide_edges --space darts --device cuda  # on a GPU, under the CUDA policy

Builds the same model twice under the device's policy (`darts_sg.speed.accelerate.device_policy`), once
with the switch on and once off, and times their training steps in turns after a warm-up step each,
so that drifts of the machine's speed hit both alike (on a GPU each step is timed to its end,
after `torch.cuda.synchronize`). With --genotype: a retraining step of that
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
from darts_sg.speed.fused_optim import optimizer_kwargs

from bench_steps import DEFAULTS, cpu_line
from steps import build_step


def retrain_step(genotype: str, policy: Acceleration, C: int, layers: int, batch: int, device: torch.device):
    """One SGD step of the genotype's network on a fixed random batch, as a closure."""
    torch.manual_seed(0)
    model = darts_sg.build_network(load_genotype(genotype), C=C, layers=layers, num_classes=10, auxiliary=True)
    model = accelerate(model, device, policy)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=3e-4, **optimizer_kwargs("sgd", device))
    layout = torch.channels_last if policy.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=layout).to(device)
    y = torch.randint(0, 10, (batch,)).to(device)

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
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        relaunch_with_tcmalloc()  # as the jobs run (darts_sg.utils.allocator)
        torch.set_num_threads(2)
        print(f"{cpu_line()}; torch {torch.__version__}, 2 threads, allocator: {loaded_allocator()}")
    else:
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA policy")
    steps = {}
    for on in (True, False):
        if args.genotype:
            policy = dataclasses.replace(device_policy(device.type), **{args.switch: on})
            steps[on] = retrain_step(args.genotype, policy, args.C, args.layers, args.batch, device)
        elif device.type == "cpu":
            steps[on], _ = build_step("search-fo", {**DEFAULTS, args.switch: on}, args.space)
        else:  # the CUDA policy with the switch set (steps.build_step)
            steps[on], _ = build_step("search-fo", {"amp": "off", "compile": False, args.switch: on}, args.space, device="cuda")
        for _ in range(1 if device.type == "cpu" else 3):  # warm-up (cuDNN picks its kernels in the first steps)
            steps[on]()
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.turns):
        for on in (True, False):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[on]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[on].append(time.perf_counter() - start)
    what = f"retraining {args.genotype} (C={args.C}, {args.layers} cells, batch {args.batch})" if args.genotype else f"search-fo {args.space}"
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{what}: {args.switch} on {[round(t, 3) for t in times[True]]} s, off {[round(t, 3) for t in times[False]]} s; "
          f"medians {on:.3f} / {off:.3f} s, on/off {on / off:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
