"""How many aten ops (kernels, roughly) one training step dispatches, under each device policy, on any machine.

On a GPU a step of this network is bound by the host issuing kernels, not by the GPU running
them, so the number of ops per step is the proxy for GPU time that any CPU can count. The count
runs the step built like ``steps.build_step`` (the jobs' step, its own optimizers) on the
CPU at C=16, 8 cells, batch 2, with the switches of ``device_policy("cuda")`` or
``device_policy("cpu")``, after one warm step, under a ``TorchDispatchMode`` that counts every aten
op the step dispatches (forward, backward and optimizer). Per edge: one normal cell of the darts
and sgblock supernets (14 edges and the two preprocessing convolutions), forward and backward
(input, weight and alpha gradients), and its total over its edges.

    python benchmarks/bench_dispatch.py                       # the table, also written to benchmarks/results-dispatch.md
    python benchmarks/bench_dispatch.py --top 15 --out ''     # and the most frequent ops of each row, nothing written
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from steps import build_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (step kind, space, label)
STEP_ROWS = [
    ("search-fo", "darts", "first order, darts space"),
    ("search-fo", "sgblock", "first order, sgblock space"),
    ("search-so", "darts", "second order, darts space"),
    ("retrain", "darts", "retraining DARTS_V2 (C=36, 20 cells, aux)"),
]
POLICIES = ("cuda", "cuda, narrow edges", "cpu")  # narrow edges: the cuda policy with wide_edges off


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, by name (``counts``) and in all (``total``)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def policy_options(policy: str) -> dict:
    """`build_step`'s CPU options that reproduce `device_policy(device)` (the jobs' optimizers: ``fused_optim``'s on CUDA);
    `policy` is a device type, optionally followed by ", narrow edges" (wide_edges off)."""
    from darts_sg.speed.accelerate import device_policy

    device_type, _, variant = policy.partition(", ")
    cuda = device_type == "cuda"
    options = {**dataclasses.asdict(device_policy(device_type)), "foreach": None if cuda else False, "skip_none": True,
               "optimizer_device": device_type}  # fmt: skip
    return {**options, "wide_edges": False} if variant == "narrow edges" else options


def count_step(kind: str, opts: dict, space: str, batch_size: int = 2) -> OpCounter:
    """The ops of one step of `kind` (`build_step` on the CPU with `opts`), after one warm step."""
    torch.manual_seed(0)
    step, _ = build_step(kind, opts, space, batch_size=batch_size)
    step()
    counter = OpCounter()
    with counter:
        step()
    return counter


def count_cell(space: str, opts: dict, C: int = 16, batch_size: int = 2) -> tuple[OpCounter, OpCounter, int]:
    """(forward, backward, edges) ops of the second cell of a supernet of `space` (a normal cell at C channels,
    32x32) under `opts`' switches: forward, then backward to its inputs, weights and alphas."""
    import torch.nn.functional as F

    import darts_sg
    from darts_sg.speed.accelerate import Acceleration, accelerate

    torch.manual_seed(0)
    switches = {f.name: opts.get(f.name, False) for f in dataclasses.fields(Acceleration)}
    acceleration = Acceleration(**{**switches, "amp": "off", "cudnn_benchmark": False})
    model = accelerate(darts_sg.build_supernet(space, C=C, layers=8), torch.device("cpu"), acceleration)
    cell = model.cells[1]
    memory_format = torch.channels_last if acceleration.channels_last else torch.contiguous_format
    s0, s1 = (torch.randn(batch_size, c, 32, 32).contiguous(memory_format=memory_format).requires_grad_(True) for c in (3 * C, 4 * C))
    cell(s0, s1, F.softmax(model.alpha_normal, -1)).sum().backward()  # warm
    forward, backward = OpCounter(), OpCounter()
    with forward:
        out = cell(s0, s1, F.softmax(model.alpha_normal, -1)).sum()
    with backward:
        out.backward()
    return forward, backward, len(cell.edges)


def _top(counter: OpCounter, n: int) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.counts.most_common(n))


def table(top: int = 0) -> str:
    """The Markdown tables: ops per step for each row and policy, then ops per edge."""
    lines = [
        f"torch {torch.__version__}; counted on the CPU (batch 2) with each device policy's switches; `python benchmarks/bench_dispatch.py`",
        "",
        "| step | " + " | ".join(f"aten ops per step, {p} policy" for p in POLICIES) + " |",
        "|---|" + "---:|" * len(POLICIES),
    ]
    notes = []
    for kind, space, label in STEP_ROWS:
        counters = [count_step(kind, policy_options(p), space) for p in POLICIES]
        lines.append(f"| {label} | " + " | ".join(f"{c.total:,}" for c in counters) + " |")
        if top:
            notes += [f"- {label}, {p} policy: {_top(c, top)}" for p, c in zip(POLICIES, counters)]
    lines += ["", "| one normal cell (C=16, with its preprocessing) | " + " | ".join(f"forward + backward, {p} policy (per edge)" for p in POLICIES) + " |",
              "|---|" + "---:|" * len(POLICIES)]  # fmt: skip
    for space in ("darts", "sgblock"):
        counters = [count_cell(space, policy_options(p)) for p in POLICIES]
        cells = [f"{f.total:,} + {b.total:,} ({(f.total + b.total) / n:.0f})" for f, b, n in counters]
        lines.append(f"| {space} space | " + " | ".join(cells) + " |")
        if top:
            notes += [f"- {space} cell, {p} policy, forward: {_top(f, top)}; backward: {_top(b, top)}" for p, (f, b, _) in zip(POLICIES, counters)]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-dispatch.md"), help="write the table here ('' for nowhere)")
    parser.add_argument("--top", type=int, default=0, help="also list each row's N most frequent ops")
    args = parser.parse_args()
    torch.set_num_threads(2)
    text = table(args.top)
    print(text, end="")
    if args.out:
        from darts_sg.utils.io import atomic_write_text

        atomic_write_text(Path(args.out), "# Aten ops per step (benchmarks/bench_dispatch.py)\n\n" + text)


if __name__ == "__main__":
    main()
