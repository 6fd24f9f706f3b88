"""What a search's per-epoch figures cost: the four alpha figures (`--figures`, on by default; off
in the smoke preset) drawn from a committed search's alphas.jsonl, on one torch thread.

    python benchmarks/bench_figures.py [--alphas results/compare-medium/search/darts-s0/alphas.jsonl]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench_steps import cpu_line
from darts_sg.plots.figures import figure_png
from darts_sg.plots.visualize import alpha_figures, read_alpha_records

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default=str(ROOT / "results" / "compare-medium" / "search" / "darts-s0" / "alphas.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = read_alpha_records(args.alphas)
    print(cpu_line())
    figure_png(alpha_figures(records[:1])[0][2])  # the first drawing loads matplotlib and its fonts: not timed
    print("| epochs drawn | figures | seconds |")
    print("|---:|---:|---:|")
    for epochs in sorted({1, len(records)}):
        start = time.perf_counter()
        figures = alpha_figures(records[:epochs])
        for _, _, figure in figures:
            figure_png(figure)
        print(f"| {epochs} | {len(figures)} | {time.perf_counter() - start:.2f} |")


if __name__ == "__main__":
    main()
