"""Does bf16 autocast (--amp) learn the same architecture as fp32? A short search, twice.

Runs the same search (same seed, data order and initial weights) in fp32 and with `--amp`, then
compares per epoch the softmax architecture weights (largest and mean absolute difference,
against how far the fp32 weights moved from uniform), the validation accuracy, and the derived
genotypes edge by edge. For scale, the same comparison between the fp32 run and an fp32 run
with another seed: the run-to-run variability of the search itself. Each run resumes if
interrupted; the report is rewritten at the end.

    python benchmarks/amp_learning.py --out results/amp-check --data-root ../shared/data   # ~40 min on 2 cores (bf16 is slow there)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from darts_sg.utils.io import atomic_write_text
from darts_sg.train.config import SEARCH_PRESETS, SearchConfig
from darts_sg.jobs.search import run_search


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run(out: Path, config: SearchConfig) -> None:
    if (out / "genotype.json").exists() and len(_read_jsonl(out / "metrics.jsonl")) >= config.epochs:
        return
    run_search(config, str(out), resume=(out / "checkpoint.pt").exists(), progress=False)


def _edge_agreement(a: dict, b: dict) -> tuple[int, int]:
    """(edges with the same op and input, edges) over both cell types."""
    pairs = [(x, y) for cell in ("normal", "reduce") for x, y in zip(a[cell], b[cell])]
    return sum(list(x) == list(y) for x, y in pairs), len(pairs)


def compare(fp32: Path, bf16: Path) -> dict:
    """Per-epoch differences between the two runs' architecture weights, accuracies and genotypes."""
    alphas_a, alphas_b = _read_jsonl(fp32 / "alphas.jsonl"), _read_jsonl(bf16 / "alphas.jsonl")
    metrics_a, metrics_b = _read_jsonl(fp32 / "metrics.jsonl"), _read_jsonl(bf16 / "metrics.jsonl")
    epochs = []
    for a, b, ma, mb in zip(alphas_a, alphas_b, metrics_a, metrics_b):
        pa = [p for cell in ("normal", "reduce") for row in a[cell] for p in row]
        pb = [p for cell in ("normal", "reduce") for row in b[cell] for p in row]
        uniform = 1.0 / len(a["primitives"])
        diffs = [abs(x - y) for x, y in zip(pa, pb)]
        same, total = _edge_agreement(ma["genotype"], mb["genotype"])
        epochs.append({
            "epoch": a["epoch"],
            "max_abs_diff": max(diffs),
            "mean_abs_diff": sum(diffs) / len(diffs),
            "fp32_max_move_from_uniform": max(abs(x - uniform) for x in pa),
            "fp32_mean_move_from_uniform": sum(abs(x - uniform) for x in pa) / len(pa),
            "val_acc_fp32": ma["val_acc"],
            "val_acc_bf16": mb["val_acc"],
            "train_loss_fp32": ma["train_loss"],
            "train_loss_bf16": mb["train_loss"],
            "genotype_edges_same": same,
            "genotype_edges": total,
        })  # fmt: skip
    final_a = json.loads((fp32 / "genotype.json").read_text())
    final_b = json.loads((bf16 / "genotype.json").read_text())
    same, total = _edge_agreement(final_a, final_b)
    return {"epochs": epochs, "final_edges_same": same, "final_edges": total,
            "seconds_fp32": sum(m["train_seconds"] for m in metrics_a),
            "seconds_bf16": sum(m["train_seconds"] for m in metrics_b)}  # fmt: skip


def _table(result: dict, other: str) -> list[str]:
    lines = [
        f"| epoch | max abs diff of softmax(alpha) | mean abs diff | fp32 max / mean move from uniform | train loss fp32 / {other} | val acc fp32 / {other} | genotype edges the same |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in result["epochs"]:
        lines.append(
            f"| {e['epoch']} | {e['max_abs_diff']:.4f} | {e['mean_abs_diff']:.4f} | "
            f"{e['fp32_max_move_from_uniform']:.4f} / {e['fp32_mean_move_from_uniform']:.4f} | "
            f"{e['train_loss_fp32']:.4f} / {e['train_loss_bf16']:.4f} | "
            f"{100 * e['val_acc_fp32']:.2f}% / {100 * e['val_acc_bf16']:.2f}% | {e['genotype_edges_same']} of {e['genotype_edges']} |"
        )  # fmt: skip
    lines += ["", f"Final genotypes: {result['final_edges_same']} of {result['final_edges']} edges the same. "
              f"Training time: fp32 {result['seconds_fp32']:.0f} s, {other} {result['seconds_bf16']:.0f} s.", ""]  # fmt: skip
    return lines


def report_markdown(amp: dict, seed: dict, command: str) -> str:
    lines = ["# bf16 autocast vs fp32: the same short search twice", "", f"`{command}`", "",
             "## fp32 vs bf16 autocast (same seed)", ""] + _table(amp, "bf16")  # fmt: skip
    lines += ["## For scale: fp32 vs fp32 with seed 1", ""] + _table(seed, "seed 1")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/amp-check"))
    parser.add_argument("--ops", default="sgblock")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subset", type=int, default=256, help="images per half (weights / alphas)")
    parser.add_argument("--alpha-lr", type=float, default=1e-2)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    settings = {**SEARCH_PRESETS["quick"], "ops": args.ops, "epochs": args.epochs, "subset": args.subset,
                "alpha_lr": args.alpha_lr, "data_root": args.data_root, "deterministic": True}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    for name, changes in (("fp32", {}), ("fp32-seed1", {"seed": 1}), ("bf16", {"amp": "bf16"})):
        _run(args.out / name, SearchConfig(**{**settings, **changes}))
        print(f"{name} run done", flush=True)
    result = {"amp": compare(args.out / "fp32", args.out / "bf16"), "seed": compare(args.out / "fp32", args.out / "fp32-seed1")}
    command = (f"python benchmarks/amp_learning.py --out {args.out} --ops {args.ops} --epochs {args.epochs} "
               f"--subset {args.subset} --alpha-lr {args.alpha_lr}")  # fmt: skip
    atomic_write_text(args.out / "report.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "report.md", report_markdown(result["amp"], result["seed"], command))
    print(report_markdown(result["amp"], result["seed"], command))


if __name__ == "__main__":
    main()
