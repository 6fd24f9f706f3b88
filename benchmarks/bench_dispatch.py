"""How many aten ops (kernels, roughly) one training step dispatches, under each device policy, on any machine.

On a GPU a step of this network is bound by the host issuing kernels, not by the GPU running
them, so the number of ops per step is the proxy for GPU time that any CPU can count. The count
runs the step built like ``bench_steps.build_step`` (the jobs' step, its own optimizers) on the
CPU at C=16, 8 cells, batch 2, with the switches of ``device_policy("cuda")`` or
``device_policy("cpu")``, after one warm step, under a ``TorchDispatchMode`` that counts every aten
op the step dispatches (forward, backward and optimizer). Per edge: one stride-1 mixed op of
the darts and sgblock spaces, forward and backward (input and alpha gradients) separately.

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
from bench_steps import build_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (step kind, space, label)
STEP_ROWS = [
    ("search-fo", "darts", "first order, darts space"),
    ("search-fo", "sgblock", "first order, sgblock space"),
    ("search-so", "darts", "second order, darts space"),
    ("retrain", "darts", "retraining DARTS_V2 (C=36, 20 cells, aux)"),
]
POLICIES = ("cuda", "cpu")


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


def policy_options(device_type: str) -> dict:
    """`build_step`'s CPU options that reproduce `device_policy(device_type)` (the jobs' optimizers: foreach on CUDA)."""
    from darts_sg.accelerate import device_policy

    policy = dataclasses.asdict(device_policy(device_type))
    return {**policy, "foreach": device_type == "cuda", "skip_none": True}


def count_step(kind: str, opts: dict, space: str, batch_size: int = 2) -> OpCounter:
    """The ops of one step of `kind` (`build_step` on the CPU with `opts`), after one warm step."""
    torch.manual_seed(0)
    step, _ = build_step(kind, opts, space, batch_size=batch_size)
    step()
    counter = OpCounter()
    with counter:
        step()
    return counter


def count_edge(space: str, opts: dict, C: int = 16, batch_size: int = 2) -> tuple[OpCounter, OpCounter]:
    """(forward, backward) ops of one stride-1 mixed op of `space` under `opts`' switches, at C channels, 32x32."""
    import torch.nn.functional as F

    from darts_sg.accelerate import Acceleration, accelerate
    from darts_sg.cells import MixedOp
    from darts_sg.ops import OpOptions, resolve_space

    torch.manual_seed(0)
    switches = {f.name: opts.get(f.name, False) for f in dataclasses.fields(Acceleration)}
    acceleration = Acceleration(**{**switches, "amp": "off", "cudnn_benchmark": False})
    primitives = resolve_space(space)
    edge = accelerate(MixedOp(C, 1, primitives, OpOptions()), torch.device("cpu"), acceleration)
    memory_format = torch.channels_last if acceleration.channels_last else torch.contiguous_format
    x = torch.randn(batch_size, C, 32, 32).contiguous(memory_format=memory_format).requires_grad_(True)
    alpha = torch.zeros(len(primitives), requires_grad=True)
    edge(x, F.softmax(alpha, 0)).sum().backward()  # warm
    forward, backward = OpCounter(), OpCounter()
    with forward:
        out = edge(x, F.softmax(alpha, 0)).sum()
    with backward:
        out.backward()
    return forward, backward


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
    lines += ["", "| one stride-1 edge (C=16) | " + " | ".join(f"forward + backward, {p} policy" for p in POLICIES) + " |",
              "|---|" + "---:|" * len(POLICIES)]  # fmt: skip
    for space in ("darts", "sgblock"):
        counters = [count_edge(space, policy_options(p)) for p in POLICIES]
        lines.append(f"| {space} space | " + " | ".join(f"{f.total} + {b.total}" for f, b in counters) + " |")
        if top:
            notes += [f"- {space} edge, {p} policy, forward: {_top(f, top)}; backward: {_top(b, top)}" for p, (f, b) in zip(POLICIES, counters)]
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
        from darts_sg.io import atomic_write_text

        atomic_write_text(Path(args.out), "# Aten ops per step (benchmarks/bench_dispatch.py)\n\n" + text)


if __name__ == "__main__":
    main()
