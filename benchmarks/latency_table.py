"""How well the latency lookup table (`--cost latency`) predicts a whole network: DARTS_V2 at C=36, 20 cells,
batch 1, one CPU thread; the table's sum of per-op latencies against the whole network timed the same way.

    python benchmarks/latency_table.py [--repeats 2]
"""

import argparse
import platform

import torch

from darts_sg.model.genotype import load_genotype
from darts_sg.model.ops import SEARCH_SPACES, OpOptions
from darts_sg.train.cost import CostTable
from darts_sg.train.latency import LatencyMeter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="fresh tables measured one after the other")
    args = parser.parse_args()
    genotype, options = load_genotype("darts_v2"), OpOptions()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    for _ in range(args.repeats):
        meter = LatencyMeter(device="cpu", threads=1)
        table = CostTable("latency", SEARCH_SPACES["darts"], 4, 36, 20, options, meter)
        whole = meter.network(genotype, 36, 20, options)
        print(f"table sum {table.total(genotype):.1f} ms, whole network {whole:.1f} ms, ratio {whole / table.total(genotype):.2f}")


if __name__ == "__main__":
    main()
