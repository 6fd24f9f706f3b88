"""Where one edge op's time goes: forward + backward of a single op at the supernet's shapes, by kernel.

    python benchmarks/profile_edge.py                          # sg_block, sep_conv_3x3, inv_res at C=16, 32x32
    python benchmarks/profile_edge.py --ops sg_block --C 32 --size 16 --stride 2 --kernels
    python benchmarks/profile_edge.py --ops sg_block,sep_conv_3x3 --compile   # also torch.compile'd
    python benchmarks/profile_edge.py --ops sg_block,inv_res --without lean_blocks   # also with that switch off

The op is built as the supernet builds it (affine=False) and accelerated with the CPU policy
(channels-last, wide-view batch norm, ...), then timed on a fixed random batch (2 threads,
median of --steps after warm-up): forward and backward with respect to the input and the
weights, as in a weight step. Each row gives the op's GFLOP (forward + backward,
``darts_sg.model.measure``) and GFLOP/s, so ops that cost more than their work stand out, and the MiB
autograd keeps for its backward (the input excluded: in the supernet every op shares it). With
--kernels, the profiler's table of the first op's kernels follows (self CPU time; the
profiler's overhead inflates the total, read the shares). With --compile, each op is also timed
compiled (``torch.compile`` of the plain op, channels-last, inductor's default mode; compile time
printed), which fuses the batch norms and ReLU6 with their neighbours: what eager code cannot do.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from darts_sg.speed.accelerate import Acceleration, accelerate, device_policy
from darts_sg.utils.allocator import loaded_allocator, relaunch_with_tcmalloc
from darts_sg.model.measure import flop_counter
from darts_sg.train.memory import counting_saved_bytes
from darts_sg.model.ops import OpOptions, build_op

from bench_steps import cpu_line, median_step_seconds


def edge_step(name: str, C: int, size: int, stride: int, batch: int, compiled: bool = False, without: str | None = None):
    """A closure running forward + backward of op `name` on a fixed channels-last batch.

    compiled: the plain op (channels-last, no eager substitutes) under ``torch.compile``;
    without: the name of a switch of the CPU policy (``darts_sg.speed.accelerate.Acceleration``) to turn off.
    """
    policy = _policy(without)
    if compiled:  # the compiler fuses the plain modules; the substitutes' autograd Functions would break its graph
        policy = dataclasses.replace(policy, fast_batchnorm=False, lean_relu6=False, fast_dilated=False, lean_blocks=False)
    op = accelerate(build_op(name, C, stride, affine=False, options=OpOptions()), torch.device("cpu"), policy)
    if compiled:
        op.compile()
    op.train()
    x = torch.randn(batch, C, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.no_grad():
        grad = torch.randn_like(op(x))  # a dense channels-last gradient, as the cell hands back

    def step():
        op.zero_grad(set_to_none=True)
        x.grad = None
        op(x).backward(grad)

    return step


def _policy(without: str | None) -> Acceleration:
    """The CPU policy, with the switch `without` turned off."""
    policy = device_policy("cpu")
    return policy if without is None else dataclasses.replace(policy, **{without: False})


def saved_mib(name: str, C: int, size: int, stride: int, batch: int, without: str | None = None) -> float:
    """MiB of the tensors autograd keeps for the op's backward (each storage once, the op's input excluded)."""
    op = accelerate(build_op(name, C, stride, affine=False, options=OpOptions()), torch.device("cpu"), _policy(without))
    x = torch.randn(batch, C, size, size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    counts: dict[None, int] = {}
    with counting_saved_bytes(counts, exclude=(x,)):
        op(x)
    return sum(counts.values()) / 2**20


def memory_pass_line(C: int, size: int, batch: int, warmup: int, steps: int) -> str:
    """The time of one copy of a full-width tensor of the edge: the unit to read elementwise kernels in."""
    x = torch.randn(batch, C, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.empty_like(x)
    seconds = time_step(lambda: y.copy_(x), warmup, 10 * steps)
    mib = x.numel() * x.element_size() / 2**20
    return f"one copy of a {mib:.0f} MiB activation (read + write): {1000 * seconds:.3f} ms, {2 * mib / 1024 / seconds:.0f} GiB/s"


def time_step(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    return median_step_seconds(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="sg_block,sep_conv_3x3,inv_res,dil_conv_3x3")
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--kernels", action="store_true", help="also print the profiler's kernel table of the first op")
    parser.add_argument("--compile", action="store_true", help="also time each op under torch.compile")
    parser.add_argument("--without", action="append", default=[], metavar="SWITCH",
                        help="also time each op with this switch of the CPU policy off, e.g. lean_blocks (repeatable)")
    args = parser.parse_args()
    relaunch_with_tcmalloc()  # as the jobs run (darts_sg.utils.allocator); DARTS_SG_ALLOCATOR=system for glibc's malloc
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"{cpu_line()}; torch {torch.__version__}, 2 threads, allocator: {loaded_allocator()}")
    print(f"edge op forward + backward, C={args.C}, {args.size}x{args.size}, stride {args.stride}, batch {args.batch}")
    print(memory_pass_line(args.C, args.size, args.batch, args.warmup, args.steps))
    print("| op | ms | GFLOP | GFLOP/s | saved for backward (MiB) |\n|---|---:|---:|---:|---:|")
    names = args.ops.split(",")
    for name in names:
        step = edge_step(name, args.C, args.size, args.stride, args.batch)
        seconds = time_step(step, args.warmup, args.steps)
        counter = flop_counter()
        with counter:
            step()
        gflop = counter.get_total_flops() / 1e9
        saved = saved_mib(name, args.C, args.size, args.stride, args.batch)
        print(f"| {name} | {1000 * seconds:.2f} | {gflop:.3f} | {gflop / seconds:.1f} | {saved:.0f} |", flush=True)
        for switch in args.without:
            seconds = time_step(edge_step(name, args.C, args.size, args.stride, args.batch, without=switch), args.warmup, args.steps)
            saved = saved_mib(name, args.C, args.size, args.stride, args.batch, without=switch)
            print(f"| {name}, without {switch} | {1000 * seconds:.2f} | {gflop:.3f} | {gflop / seconds:.1f} | {saved:.0f} |", flush=True)
        if args.compile:
            step = edge_step(name, args.C, args.size, args.stride, args.batch, compiled=True)
            start = time.perf_counter()
            step()  # the first call compiles forward and backward
            compile_s = time.perf_counter() - start
            seconds = time_step(step, args.warmup, args.steps)
            print(f"| {name}, compiled ({compile_s:.0f} s to compile) | {1000 * seconds:.2f} | {gflop:.3f} | {gflop / seconds:.1f} | |", flush=True)
    if args.kernels:
        from torch.profiler import ProfilerActivity, profile

        step = edge_step(names[0], args.C, args.size, args.stride, args.batch)
        time_step(step, args.warmup, 1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
