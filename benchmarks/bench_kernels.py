"""Kernel-level measurements behind the choices in benchmarks/results.md.

1. Depthwise convolutions (channels-last, batch 64, 2 threads): forward, input gradient and
   weight gradient apart, for 3x3 and 5x5 kernels at the supernet's three resolutions; for 5x5
   also the weight gradient computed as two 5x3 ones (columns 0-2 and 2-4) on shifted inputs.
2. Batch norm in training mode (channels-last, 2 threads), forward and backward: torch's
   kernel against darts_sg's wide-view path (`--fast-batchnorm`), at the channel counts of the
   retraining network (36, 72, 144) and the supernet (16, 32, 64; 8 for a narrow sandglass block).
3. torch.compile on one mixed op (C=16, 32x32, batch 64, the default edge options): forward +
   backward time eager vs compiled, and the compile time.

    python benchmarks/bench_kernels.py            # all three (~3 min)
    python benchmarks/bench_kernels.py --skip-compile
    python benchmarks/bench_kernels.py --only batchnorm
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from darts_sg.utils.allocator import loaded_allocator, relaunch_with_tcmalloc

from bench_steps import cpu_line


def _ms(fn, repeats: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def depthwise_table() -> None:
    print("| C | H=W | kernel | forward (ms) | input grad (ms) | weight grad (ms) | weight grad as two 5x3 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for C, H in [(16, 32), (32, 16), (64, 8)]:
        for k in (3, 5):
            x = torch.randn(64, C, H, H).contiguous(memory_format=torch.channels_last)
            g = torch.randn_like(x)
            w = torch.randn(C, 1, k, k).contiguous(memory_format=torch.channels_last)
            p = k // 2

            def grad(mask, inputs=x, weight=w, padding=(p, p)):
                return torch.ops.aten.convolution_backward(g, inputs, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0], C, mask)

            def grad_w_split():
                padded = F.pad(x, (2, 2, 0, 0))
                halves = [grad([False, True, False], padded[..., i : i + H + 2].contiguous(memory_format=torch.channels_last),
                               w[..., :3], (2, 0))[1] for i in (0, 2)]  # fmt: skip
                return torch.cat([halves[0][..., :2], halves[1]], dim=3)

            forward = _ms(lambda: F.conv2d(x, w, None, 1, p, 1, C))
            grad_in = _ms(lambda: grad([True, False, False]))
            grad_w = _ms(lambda: grad([False, True, False]))
            split = ""
            if k == 5:
                reference = grad([False, True, False])[1]  # the same up to float rounding:
                torch.testing.assert_close(grad_w_split(), reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
                split = f"{_ms(grad_w_split):.2f}"
            print(f"| {C} | {H} | {k}x{k} | {forward:.2f} | {grad_in:.2f} | {grad_w:.2f} | {split} |", flush=True)


def batchnorm_table() -> None:
    from darts_sg.speed.batchnorm import WideBatchNorm2d

    print("\n| batch | C | H=W | torch forward (ms) | torch backward (ms) | wide forward (ms) | wide backward (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, C, H in [(96, 36, 32), (96, 72, 16), (96, 144, 8), (64, 16, 32), (64, 32, 16), (64, 64, 8), (64, 8, 32)]:
        x = torch.randn(n, C, H, H).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn_like(x)
        cells, outputs = [], []
        for wide in (False, True):
            bn = WideBatchNorm2d(C) if wide else torch.nn.BatchNorm2d(C)
            outputs.append(bn(x))
            cells.append(_ms(lambda: bn(x)))
            cells.append(_ms(lambda: torch.autograd.grad(bn(x), x, g)) - cells[-1])
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-4)
        print(f"| {n} | {C} | {H} | " + " | ".join(f"{v:.2f}" for v in cells) + " |", flush=True)


def compile_row() -> None:
    from darts_sg.speed.accelerate import accelerate, device_policy
    from darts_sg.model.cells import MixedOp
    from darts_sg.model.ops import OpOptions, resolve_space

    primitives = resolve_space("darts")
    torch.manual_seed(0)
    edge = accelerate(MixedOp(16, 1, primitives, OpOptions()), torch.device("cpu"), device_policy("cpu"))
    x = torch.randn(64, 16, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = torch.softmax(torch.randn(len(primitives)), 0).requires_grad_()
    inputs = [x, weights, *edge.parameters()]

    def step(fn):
        return lambda: torch.autograd.grad(fn(x, weights).square().sum(), inputs)

    eager = _ms(step(edge), repeats=5, warmup=2)
    compiled_edge = torch.compile(edge)
    start = time.perf_counter()
    step(compiled_edge)()
    compile_s = time.perf_counter() - start
    compiled = _ms(step(compiled_edge), repeats=5, warmup=2)
    print(f"\none mixed op, forward + backward: eager {eager:.1f} ms, compiled {compiled:.1f} ms "
          f"({eager / compiled:.2f}x), first compiled call {compile_s:.0f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--only", choices=["depthwise", "batchnorm", "compile"], help="run one measurement")
    args = parser.parse_args()
    relaunch_with_tcmalloc()  # as the jobs run (darts_sg.utils.allocator); DARTS_SG_ALLOCATOR=system for glibc's malloc
    torch.set_num_threads(2)
    print(f"{cpu_line()}; torch {torch.__version__}, 2 threads, allocator: {loaded_allocator()}")
    if args.only in (None, "depthwise"):
        depthwise_table()
    if args.only in (None, "batchnorm"):
        batchnorm_table()
    if args.only == "compile" or (args.only is None and not args.skip_compile):
        compile_row()


if __name__ == "__main__":
    main()
