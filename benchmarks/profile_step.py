"""Where the time of one step goes: torch profiler table of a step at the current defaults.

    python benchmarks/profile_step.py                    # first-order search step, batch 32
    python benchmarks/profile_step.py --kind retrain --batch-size 48
    python benchmarks/profile_step.py --kind retrain --conv-flops   # FLOP shares by conv kind

Prints the operators by self CPU time (profiler overhead inflates the total; read shares).
With --conv-flops, instead: the share of the step's convolution FLOPs (forward and gradients,
counted as in darts_sg.model.measure) in 1x1 dense, depthwise and other convolutions.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from bench_steps import DEFAULTS
from steps import STEP_KINDS, build_step


def conv_flop_shares(step) -> dict[str, float]:
    """Shares of one step's convolution FLOPs by kind: '1x1', 'depthwise', 'other'."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from darts_sg.model.measure import conv_backward_flops, conv_forward_flops

    totals: collections.Counter = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.convolution.default:
                w, groups = args[1], args[8]
                flops = conv_forward_flops(args[0].shape, w.shape, out.shape, args[6])
            elif func is torch.ops.aten.convolution_backward.default:
                w, groups = args[2], args[9]
                flops = conv_backward_flops(args[0].shape, args[1].shape, w.shape, *args[3:11], out_shape=None)
            else:
                return out
            kind = "depthwise" if groups > 1 else "1x1" if tuple(w.shape[2:]) == (1, 1) else "other"
            totals[kind] += flops
            return out

    with Count():
        step()
    total = sum(totals.values())
    return {kind: value / total for kind, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=STEP_KINDS, default="search-fo")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--space", default="darts")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    parser.add_argument("--conv-flops", action="store_true", help="print the convolution FLOP shares by kind instead")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    step, images = build_step(args.kind, DEFAULTS, args.space, batch_size=args.batch_size)
    step()  # warm-up
    if args.conv_flops:
        shares = conv_flop_shares(step)
        print(f"{args.kind}: convolution FLOPs " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(shares.items())))
        return
    start = time.perf_counter()
    step()
    print(f"{args.kind}, batch {images}: {time.perf_counter() - start:.2f} s per step without the profiler")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
