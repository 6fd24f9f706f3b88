"""Speed and memory of a search step, a retraining step and the data pipeline, option by option.

Each row runs in a fresh process (so its peak RSS is its own) on fixed random CIFAR-shaped
inputs with 2 threads, like ../shared/BASELINES.md: warm-up steps, then the median of timed
steps. The `reference-like` row turns off every speed option of ours (NCHW, `none` computed,
native dilated convolutions, one ReLU per op, unfused weighted sums, for-loop optimizers) to
approximate the reference implementation on the same machine; the BASELINES figures were measured on another CPU.
Every worker runs under tcmalloc where it is installed, as the jobs do (`darts_sg.utils.allocator`),
except the rows whose options say glibc's malloc.

Every run starts with the CPU's fp32 GEMM throughput (2 threads), and every step row gives its
GFLOP (convolutions and matmuls, forward and backward, by torch's FLOP counter with the weight
gradient of grouped convolutions counted correctly: `darts_sg.model.measure`) and the share of that GEMM
peak it reaches. oneDNN runs depthwise and 1x1 convolutions on 16-64 channels far below the GEMM
rate, so the GEMM peak is an upper bound no step of this network comes near. The last column is
the number of aten ops the step dispatches at batch 2 (`bench_dispatch.py`: on a GPU, where the
host issuing kernels bounds this network's step, the proxy for its time).

    python benchmarks/bench_steps.py                     # the full table (~30-40 min on 2 cores)
    python benchmarks/bench_steps.py --only search-fo    # one step kind
    python benchmarks/bench_steps.py --warmup 1 --steps 3 --out benchmarks/results.md
    python benchmarks/bench_steps.py --device cuda --out benchmarks/results-cuda.md   # on a GPU

With `--device cuda` the rows (CUDA_ROWS) are the first-order, second-order and retraining steps
at the DARTS settings under the device's policy, eager or captured as CUDA graphs
(`darts_sg.speed.cuda_graphs`), fp32 (TF32 convolutions, torch's default) or bf16, in both spaces and at
batch 64 and 256; then fp16 with loss scaling and torch.compile. Each is timed after
`torch.cuda.synchronize`, with the peak GPU memory and the time to build, warm up and capture or
compile; and the data pipeline with CIFAR-10 held on the GPU. The GPU's name heads the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from darts_sg.utils.allocator import ALLOCATOR_ENV, relaunch_with_tcmalloc
from steps import build_step  # noqa: E402 (this folder)

ROOT = Path(__file__).resolve().parents[1]

# Every option on. The jobs' defaults are the same minus foreach optimizers (no measurable gain).
FAST = {"channels_last": True, "skip_none": True, "fast_dilated": True, "share_relu": True, "fused_sum": True,
        "fast_batchnorm": True, "keep_layout": True, "lean_relu6": True, "lean_blocks": True, "foreach": True, "amp": "off"}  # fmt: skip
REFERENCE = {**{key: False for key in FAST}, "amp": "off"}
DEFAULTS = {**FAST, "foreach": False}

# (step kind, row label, options)
ROWS = [
    ("search-fo", "reference-like", REFERENCE),
    ("search-fo", "+ channels_last", {**REFERENCE, "channels_last": True}),
    ("search-fo", "+ skip none", {**REFERENCE, "channels_last": True, "skip_none": True}),
    ("search-fo", "+ fast dilated conv", {**REFERENCE, "channels_last": True, "skip_none": True, "fast_dilated": True}),
    ("search-fo", "+ shared ReLU", {**DEFAULTS, "fused_sum": False}),
    ("search-fo", "+ fused weighted sum (= defaults)", DEFAULTS),
    ("search-fo", "+ foreach optimizers", FAST),
    ("search-fo", "defaults + bf16 autocast", {**DEFAULTS, "amp": "bf16"}),
    ("search-fo", "defaults + partial channels K=4", {**DEFAULTS, "partial_channels": 4}),
    ("search-so", "reference-like", REFERENCE),
    ("search-so", "defaults", DEFAULTS),
    ("search-so", "defaults + partial channels K=4", {**DEFAULTS, "partial_channels": 4}),
    ("retrain", "reference-like", REFERENCE),
    ("retrain", "defaults", DEFAULTS),
    ("retrain", "defaults + bf16 autocast", {**DEFAULTS, "amp": "bf16"}),
    ("data", "batched tensor augmentation", {}),
    ("search-fo", "defaults + recomputed cells", {**DEFAULTS, "recompute_cells": True}),
    ("search-so", "defaults + recomputed cells", {**DEFAULTS, "recompute_cells": True}),
    ("retrain", "defaults + recomputed cells", {**DEFAULTS, "recompute_cells": True}),
    ("search-fo", "defaults + partial channels K=4 + recomputed cells", {**DEFAULTS, "partial_channels": 4, "recompute_cells": True}),
    ("retrain", "defaults with native batch norm", {**DEFAULTS, "fast_batchnorm": False}),
    ("search-fo", "defaults with native batch norm (sgblock space)", {**DEFAULTS, "fast_batchnorm": False, "space": "sgblock"}),
    ("search-fo", "defaults (sgblock space)", {**DEFAULTS, "space": "sgblock"}),
    ("search-fo", "defaults (invres space)", {**DEFAULTS, "space": "invres"}),
    ("search-so", "defaults (sgblock space)", {**DEFAULTS, "space": "sgblock"}),
    ("search-fo", "defaults + partial channels K=4 (sgblock space)", {**DEFAULTS, "partial_channels": 4, "space": "sgblock"}),
    ("search-so", "defaults (invres space)", {**DEFAULTS, "space": "invres"}),
    ("search-fo", "defaults + partial channels K=4 (invres space)", {**DEFAULTS, "partial_channels": 4, "space": "invres"}),
    ("search-fo", "defaults with torch's ReLU6 (sgblock space)", {**DEFAULTS, "lean_relu6": False, "space": "sgblock"}),
    ("search-fo", "defaults with torch's ReLU6 (invres space)", {**DEFAULTS, "lean_relu6": False, "space": "invres"}),
    ("search-fo", "defaults with glibc's malloc", {**DEFAULTS, "allocator": "system"}),
    ("search-fo", "defaults with glibc's malloc (sgblock space)", {**DEFAULTS, "allocator": "system", "space": "sgblock"}),
    ("retrain", "defaults with glibc's malloc", {**DEFAULTS, "allocator": "system"}),
    ("search-fo", "defaults with plain blocks (sgblock space)", {**DEFAULTS, "lean_blocks": False, "space": "sgblock"}),
    ("search-fo", "defaults with plain blocks (invres space)", {**DEFAULTS, "lean_blocks": False, "space": "invres"}),
    ("search-so", "defaults with plain blocks (sgblock space)", {**DEFAULTS, "lean_blocks": False, "space": "sgblock"}),
]

# On CUDA: the device's policy (darts_sg.speed.accelerate.device_policy: cudnn.benchmark, no CPU
# substitutes), each step eager or captured as a CUDA graph (darts_sg.speed.cuda_graphs), in fp32 (TF32
# convolutions, torch's default) or bf16 autocast; then fp16 with loss scaling and torch.compile.
# (step kind, row label, options): options name the space and the batch (None = the step's default).
def _cuda_row(kind, space, batch, mode, amp="off"):
    precision = {"off": "fp32", "bf16": "bf16", "fp16": "fp16 + GradScaler"}[amp]
    return (kind, f"{space or 'DARTS_V2'}, batch {batch}, {mode} {precision}",
            {"amp": amp, "graphs": mode == "graphs", "compile": mode == "compiled", "space": space, "batch": batch})  # fmt: skip


CUDA_ROWS = [
    _cuda_row("search-fo", "darts", 64, "eager"), _cuda_row("search-fo", "darts", 64, "graphs"),
    _cuda_row("search-fo", "darts", 64, "graphs", "bf16"),
    _cuda_row("search-fo", "sgblock", 64, "eager"), _cuda_row("search-fo", "sgblock", 64, "graphs"),
    _cuda_row("search-fo", "sgblock", 64, "graphs", "bf16"),
    _cuda_row("search-fo", "darts", 256, "eager"), _cuda_row("search-fo", "darts", 256, "graphs"),
    _cuda_row("search-fo", "sgblock", 256, "graphs"),
    _cuda_row("search-so", "darts", 64, "eager"), _cuda_row("search-so", "darts", 64, "graphs"),
    _cuda_row("search-so", "darts", 64, "graphs", "bf16"),
    _cuda_row("retrain", None, 96, "eager"), _cuda_row("retrain", None, 96, "graphs"),
    _cuda_row("retrain", None, 96, "graphs", "bf16"),
    _cuda_row("search-fo", "darts", 64, "eager", "fp16"), _cuda_row("search-fo", "darts", 64, "compiled"),
    _cuda_row("retrain", None, 96, "compiled"),
    ("data", "CIFAR-10 held on the GPU, augmentation there", {}),
]  # fmt: skip


def worker(spec: dict) -> dict:
    """Time one configuration in this process; return figures as a dict."""
    import torch

    from darts_sg.utils.allocator import loaded_allocator

    torch.set_num_threads(2)
    torch.manual_seed(0)
    kind, device = spec["kind"], spec.get("device", "cpu")
    if kind == "data":
        return _data_worker(spec)
    if kind == "gemm":
        return _gemm_worker()
    cuda = device == "cuda"
    started = time.perf_counter()
    step, images = build_step(kind, spec["options"], spec["space"], spec.get("batch"), device=device)
    for _ in range(spec["warmup"]):
        step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    first_steps = time.perf_counter() - started  # building, warm-up and (compiled rows) compilation
    median = median_step_seconds(step, spec["steps"], sync)
    if cuda:
        return {"s_per_step": median, "images_per_s": images / median, "warmup_s": first_steps,
                "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3}  # fmt: skip
    peak = _peak_rss_gb()  # before the FLOP count, which runs a smaller batch
    figures = {"s_per_step": median, "images_per_s": images / median, "peak_rss_gb": peak, "allocator": loaded_allocator()}
    if spec.get("count_flops", True):
        from bench_dispatch import count_step

        figures["gflop_per_step"] = _step_gflop(kind, spec["options"], spec["space"], images)
        figures["aten_ops_per_step"] = count_step(kind, spec["options"], spec["space"]).total  # at batch 2
    return figures


def median_step_seconds(step, steps: int, sync=lambda: None) -> float:
    """Median wall time of `steps` calls of `step` (the upper middle one for an even count); `sync`
    waits for the device after each call."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _step_gflop(kind: str, opts: dict, space: str, images: int, probe_batch: int = 8) -> float:
    """GFLOP of one step (convolutions and matmuls, forward and backward; `darts_sg.model.measure`).

    Counted on a step of `probe_batch` images and scaled to `images` (the count is linear in the batch).
    """
    from darts_sg.model.measure import flop_counter

    step, _ = build_step(kind, opts, space, batch_size=probe_batch)
    counter = flop_counter()
    with counter:
        step()
    return counter.get_total_flops() * images / probe_batch / 1e9


def _gemm_worker(n: int = 2048, repeats: int = 20) -> dict:
    """fp32 matrix-multiply throughput of this CPU with 2 threads: the ceiling of any conv-heavy step."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = (time.perf_counter() - start) / repeats
    return {"s_per_step": seconds, "images_per_s": 0.0, "peak_rss_gb": _peak_rss_gb(), "gflop_per_step": 2 * n**3 / 1e9}


def _data_worker(spec: dict) -> dict:
    import torch

    from darts_sg.train.data import DataAugmentation, BatchLoader, load_cifar10

    device = spec.get("device", "cpu")
    data = load_cifar10(spec.get("data_root"))
    loader = BatchLoader(data, 96, DataAugmentation(cutout=16), channels_last=device == "cpu", device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start, n = time.perf_counter(), 0
    for x, _ in loader.iterate(0):
        n += x.shape[0]
    sync()
    seconds = time.perf_counter() - start
    memory = {"peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3} if device == "cuda" else {"peak_rss_gb": _peak_rss_gb()}
    return {"s_per_step": seconds / len(loader), "images_per_s": n / seconds, **memory}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def run_row(spec: dict, timeout: float) -> tuple[dict | None, str]:
    """Run one row in a fresh process: (figures, "") or (None, why it gave none)."""
    # the worker relaunches itself with tcmalloc as the jobs do, unless the row asks for glibc's malloc
    env = {**os.environ, ALLOCATOR_ENV: spec.get("options", {}).get("allocator", "auto")}
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, cwd=ROOT, timeout=timeout, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        steps = spec["warmup"] + spec["steps"]
        return None, f"> {timeout / steps:.0f} (stopped after {timeout:.0f} s for {steps} steps)"
    if proc.returncode != 0:
        return None, "failed: " + (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def write_out(out: Path | None, header: str, lines: list[str], raw: dict) -> None:
    """The table so far and its raw figures (after every row, so a stopped run keeps what it measured)."""
    if out:
        from darts_sg.utils.io import atomic_write_text

        atomic_write_text(out, "\n".join([header, *lines]) + "\n")
        atomic_write_text(out.with_suffix(".json"), json.dumps(raw, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: the option-by-option table; cuda: eager / AMP / compiled steps on the GPU")  # fmt: skip
    parser.add_argument("--only", choices=["search-fo", "search-so", "retrain", "data"], action="append")
    parser.add_argument("--space", default="darts", help="search space of the search rows that name none (darts, sgblock, invres)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 1 on the CPU, 5 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3 on the CPU, 20 on CUDA)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) and raw JSON here")
    parser.add_argument("--rows", default=None, help="comma-separated row numbers (1-based, in the order of ROWS or, with --device cuda, CUDA_ROWS) to run; the GEMM row always runs on the CPU")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one row may take before it is reported as too slow")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the chosen rows this many times in turn (A B A B ...) and end with each row's median and its "
                             "ratio to the first row, pair by pair, so a comparison holds while the machine's speed drifts")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        relaunch_with_tcmalloc()
        print(json.dumps(worker(json.loads(args.worker))))
        return
    cuda = args.device == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 3)
    (cuda_table if cuda else cpu_table)(args)


def cuda_table(args) -> None:
    """Eager / AMP / compiled search and retraining steps on the GPU: images/s and peak GPU memory."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_steps.py --device cuda: no CUDA device here")
    name = torch.cuda.get_device_name()
    print(f"GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; {args.warmup} warm-up steps, median of {args.steps}")
    header = (f"| # | step ({name}) | space, batch, mode, precision | s/step | images/s | peak GPU memory (GB) | build + warm-up (s) |\n"
              "|---:|---|---|---:|---:|---:|---:|")  # fmt: skip
    print(header, flush=True)
    wanted = {int(r) for r in args.rows.split(",")} if args.rows else None
    lines, results = [], []
    for number, (kind, label, options) in enumerate(CUDA_ROWS, 1):
        if (args.only and kind not in args.only) or (wanted and number not in wanted):
            continue
        spec = {"kind": kind, "options": options, "space": options.get("space") or args.space, "batch": options.get("batch"),
                "warmup": args.warmup, "steps": args.steps, "data_root": args.data_root, "device": "cuda"}  # fmt: skip
        figures, failure = run_row(spec, args.timeout)
        if figures is None:
            lines.append(f"| {number} | {kind} | {label} | {failure} | | | |")
        else:
            results.append({"number": number, "kind": kind, "label": label, "options": options, **figures})
            warm = f"{figures['warmup_s']:.1f}" if "warmup_s" in figures else ""
            lines.append(f"| {number} | {kind} | {label} | {figures['s_per_step']:.4f} | {figures['images_per_s']:.0f} | "
                         f"{figures['peak_gpu_gb']:.2f} | {warm} |")  # fmt: skip
        print(lines[-1], flush=True)
        write_out(args.out, header, lines, {"gpu": name, "torch": torch.__version__, "warmup": args.warmup,
                                            "steps": args.steps, "rows": results})  # fmt: skip


def cpu_table(args) -> None:
    """Every CPU speed option, row by row, against the CPU's GEMM peak (with --repeat, in turns, then ratios)."""
    results = []
    header = ("| step | options | s/step | images/s | GFLOP/step | GFLOP/s | % of GEMM peak | peak RSS (GB) | aten ops/step |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    print(cpu_line())
    print("Each row in a fresh process, under tcmalloc where installed (darts_sg.utils.allocator, as the jobs run), "
          "unless its options say glibc's malloc.")
    print(header, flush=True)
    wanted = {int(r) for r in args.rows.split(",")} if args.rows else None
    rows = [("gemm", "fp32 2048x2048 matmul, 2 threads", {})] + ROWS  # the ceiling, measured in the same run
    chosen = [(n, row) for n, row in enumerate(rows) if not n or not ((args.only and row[0] not in args.only) or (wanted and n not in wanted))]
    peak = None
    for turn in range(args.repeat):
        for number, (kind, label, options) in chosen:
            if number == 0 and turn:
                continue  # the GEMM ceiling once
            spec = {"kind": kind, "options": options, "space": options.get("space", args.space), "warmup": args.warmup,
                    "steps": args.steps, "data_root": args.data_root, "count_flops": turn == 0}  # fmt: skip
            figures, failure = run_row(spec, args.timeout)
            if figures is None:
                print(f"| {kind} | {label} | {failure} | | | | | | |", flush=True)
                continue
            gflops = figures.get("gflop_per_step", 0.0) / figures["s_per_step"]
            if kind == "gemm":
                peak = gflops
            figures["gflop_per_s"] = gflops
            figures["percent_of_gemm_peak"] = 100 * gflops / peak if peak else None
            results.append({"number": number, "turn": turn, "kind": kind, "label": label, "options": options, **figures})
            print(format_row(results[-1]), flush=True)
            raw = {"cpu": cpu_line(), "space": args.space, "warmup": args.warmup, "steps": args.steps, "rows": results}
            write_out(args.out, cpu_line() + "\n\n" + header, [format_row(r) for r in results], raw)
    if args.repeat > 1:
        print(paired_summary(results))


def paired_summary(results: list[dict]) -> str:
    """Each repeated row's median s/step and its ratio to the first step row, turn by turn (min, median, max)."""
    import statistics

    rows = [r for r in results if r["kind"] != "gemm"]
    numbers = list(dict.fromkeys(r["number"] for r in rows))
    by = {(r["number"], r["turn"]): r for r in rows}
    lines = ["| row | options | turns | median s/step | ratio to row " + str(numbers[0]) + ": min / median / max |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for n in numbers:
        mine = [r for r in rows if r["number"] == n]
        ratios = [by[n, r["turn"]]["s_per_step"] / by[numbers[0], r["turn"]]["s_per_step"] for r in mine if (numbers[0], r["turn"]) in by]
        med = statistics.median(r["s_per_step"] for r in mine)
        spread = f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}" if ratios else ""
        lines.append(f"| {n} | {mine[0]['label']} | {len(mine)} | {med:.3f} | {spread} |")
    return "\n".join(lines)


def cpu_line() -> str:
    """The CPU's model and the vector extensions that matter for these kernels (lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "CPU: unknown (no lscpu)"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = [f for f in fields.get("Flags", "").split() if f.startswith(("avx2", "avx512f", "avx512_bf16", "amx"))]
    return f"CPU: {fields.get('Model name', '?').strip()}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'no AVX2'}"


def format_row(r: dict) -> str:
    """One Markdown table row of a result."""
    gflop = r.get("gflop_per_step")
    cells = [r["kind"], r["label"], f"{r['s_per_step']:.3f}", f"{r['images_per_s']:.1f}" if r["images_per_s"] else "",
             f"{gflop:.1f}" if gflop else "", f"{r['gflop_per_s']:.1f}" if gflop else "",
             f"{r['percent_of_gemm_peak']:.0f}%" if gflop and r.get("percent_of_gemm_peak") else "", f"{r['peak_rss_gb']:.2f}",
             f"{r['aten_ops_per_step']:,}" if r.get("aten_ops_per_step") else ""]  # fmt: skip
    return "| " + " | ".join(cells) + " |"

if __name__ == "__main__":
    main()
