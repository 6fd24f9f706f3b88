"""Command line: `darts-sg search|augment|evaluate|export|plot|compare` (and the `search.py` / `augment.py` scripts).

Commands only parse options and call library functions. Errors caused by input are printed
as one line on stderr with exit code 2; a run stopped by a signal exits with 128 + signal.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import click

from .errors import UserError

PRESET_HELP = "Settings bundle: paper (published settings), quick (~15-20 min on a 2-core CPU), smoke (seconds)."


def _apply(decorators: list[Callable]) -> Callable:
    def wrap(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return wrap


POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0.0, min_open=True)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0.0)

# Options shared by search and augment (same names, same meaning).
COMMON_OPTIONS = [
    click.option("--preset", type=click.Choice(["paper", "quick", "smoke"]), default="paper", show_default=True, help=PRESET_HELP),
    click.option("--epochs", type=POSITIVE, help="Training epochs."),
    click.option("--batch-size", type=POSITIVE, help="Global batch size (split across processes under torchrun)."),
    click.option("--layers", type=POSITIVE, help="Number of cells."),
    click.option("--init-channels", type=POSITIVE, help="Channels C of the first cells (doubled at each reduction)."),
    click.option("--seed", type=NON_NEGATIVE, help="Random seed (weights, alphas, data order, augmentation)."),
    click.option("--grad-clip", type=NON_NEGATIVE_FLOAT, help="Gradient-norm clip for the weights (0 = off)."),
    click.option("--sg-ratio", type=POSITIVE_FLOAT, help="Sandglass reduction ratio t [default: 6]."),
    click.option("--sg-identity", type=click.FloatRange(0.0, 1.0, min_open=True), help="Sandglass identity tensor multiplier [default: 1.0]."),
    click.option("--sg-min-hidden", type=POSITIVE, help="Floor of the sandglass bottleneck width [default: 8]."),
    click.option("--ir-expansion", type=POSITIVE, help="Inverted-residual expansion ratio t [default: 6]."),
    click.option("--channels-last/--no-channels-last", default=None, help="NHWC memory format (faster on CPU) [default: on]."),
    click.option("--fast-dilated/--native-dilated", default=None, help="Compute dilated depthwise convs as undilated ones on polyphase components (exact, faster on CPU) [default: fast]."),
    click.option("--fast-batchnorm/--native-batchnorm", default=None, help="Batch norm of channels-last CPU tensors whose channel count is not a multiple of 16 on a wide view of the same memory (same results, several times faster there) [default: fast]."),
    click.option("--recompute-cells/--no-recompute-cells", default=None, help="Keep only each cell's inputs in the forward pass and recompute its activations in the backward pass: exact, several times less peak memory, slower [default: off]."),
    click.option("--amp/--no-amp", default=None, help="bf16 autocast (CPU and CUDA); off by default, see benchmarks/ [default: off]."),
    click.option("--checkpoint-every", type=NON_NEGATIVE, help="Also checkpoint every N steps (0 = once per epoch)."),
    click.option("--deterministic/--no-deterministic", default=None, help="Deterministic algorithms: a killed and resumed run ends bit-identical."),
    click.option("--threads", type=NON_NEGATIVE, help="CPU threads for torch (0 = torch's default)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device: CUDA when present (auto), or forced [default: auto]."),
    click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding cifar-10-batches-py [default: $DARTS_SG_DATA, else ./data]; downloaded there if absent."),
    click.option("--out", type=click.Path(file_okay=False), help="Run directory to create [default: runs/<job>-<time>]."),
    click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory from its last checkpoint."),
    click.option("--progress/--no-progress", default=True, help="Show progress: a bar per epoch on a terminal, else a line every --log-every seconds; both with the ETA of the epoch and of the whole run."),
    click.option("--log-every", type=NON_NEGATIVE_FLOAT, default=60.0, show_default=True, metavar="SECONDS",
                 help="Off a terminal (nohup, a scheduler, CI): print step, loss, accuracy, images/s and ETAs every SECONDS (0 = every step)."),
]


def _config(cls, presets: dict[str, dict], preset: str, params: dict[str, Any]) -> tuple[Any, set[str]]:
    """Defaults < preset < explicitly given options; returns (config, names of explicit options)."""
    explicit = {k for k, v in params.items() if v is not None}
    values = {**presets[preset], **{k: params[k] for k in explicit}}
    return cls(**values), explicit


def _out_dir(out: str | None, resume: str | None, job: str) -> tuple[str, bool]:
    if resume and out and out != resume:
        raise click.UsageError("give either --out (new run) or --resume (existing run), not both")
    if resume:
        return resume, True
    return out or f"runs/{job}-{time.strftime('%Y%m%d-%H%M%S')}", False


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="darts-sg")
def cli() -> None:
    """darts-sg: differentiable architecture search with the MobileNeXt sandglass block."""


@cli.command(context_settings=CONTEXT)
@click.option("--ops", default=None, help="Search space (darts, sgblock, invres) or a comma-separated list of ops [default: sgblock].")
@click.option("--order", type=click.IntRange(1, 2), help="1: first-order DARTS; 2: second order (unrolled) [default: 1].")
@click.option("--nodes", type=POSITIVE, help="Intermediate nodes per cell [default: 4].")
@click.option("--subset", type=NON_NEGATIVE, help="Use N images from each half of the training set (0 = all 25k).")
@click.option("--w-lr", type=POSITIVE_FLOAT, help="Weight learning rate (cosine schedule) [default: 0.025].")
@click.option("--w-lr-min", type=NON_NEGATIVE_FLOAT, help="Final weight learning rate [default: 0.001].")
@click.option("--w-momentum", type=NON_NEGATIVE_FLOAT, help="Weight SGD momentum [default: 0.9].")
@click.option("--w-weight-decay", type=NON_NEGATIVE_FLOAT, help="Weight decay of the weights [default: 3e-4].")
@click.option("--alpha-lr", type=POSITIVE_FLOAT, help="Architecture (Adam) learning rate [default: 3e-4].")
@click.option("--alpha-weight-decay", type=NON_NEGATIVE_FLOAT, help="Architecture weight decay [default: 1e-3].")
@click.option("--partial-channels", type=POSITIVE, help="PC-DARTS: each mixed op sees 1/K of the channels, with edge normalisation (1 = off).")
@click.option("--skip-none/--compute-none", default=None, help="Do not compute the zero `none` op (exact; fixed for a run) [default: skip].")
@click.option("--share-relu/--no-share-relu", default=None, help="One ReLU per edge for its separable and dilated convs (exact, less memory) [default: on].")
@click.option("--fused-sum/--no-fused-sum", default=None, help="Accumulate each edge's weighted sum in place (exact, faster) [default: on].")
@_apply(COMMON_OPTIONS)
def search(preset, out, resume, progress, log_every, **params) -> None:
    """Search a cell architecture on CIFAR-10 (bilevel DARTS) and write the derived genotype."""
    from .search import SEARCH_PRESETS, SearchConfig, run_search

    config, explicit = _config(SearchConfig, SEARCH_PRESETS, preset, params)
    out, resuming = _out_dir(out, resume, "search")
    genotype = run_search(config, out, resume=resuming, explicit=explicit, progress=progress, log_every=log_every)
    click.echo(f"genotype: {genotype}")
    click.echo(f"written: {out}/genotype.json")


@cli.command(context_settings=CONTEXT)
@click.option("--genotype", "genotype", default=None, help="Genotype: JSON file, name in genotypes/ (e.g. darts_v2), or a legacy Genotype(...) string [required unless --resume].")
@click.option("--lr", type=POSITIVE_FLOAT, help="SGD learning rate (cosine to 0) [default: 0.025].")
@click.option("--momentum", type=NON_NEGATIVE_FLOAT, help="SGD momentum [default: 0.9].")
@click.option("--weight-decay", type=NON_NEGATIVE_FLOAT, help="Weight decay [default: 3e-4].")
@click.option("--auxiliary-weight", type=NON_NEGATIVE_FLOAT, help="Loss weight of the auxiliary head (0 = no head) [default: 0.4].")
@click.option("--drop-path", type=click.FloatRange(0.0, 1.0, max_open=True), help="Final drop-path probability, ramped linearly over epochs [default: 0.2].")
@click.option("--cutout", type=NON_NEGATIVE, help="Cutout square side in pixels (0 = off) [default: 16].")
@click.option("--train-subset", type=NON_NEGATIVE, help="Train on the first N training images (0 = all 50k).")
@click.option("--test-subset", type=NON_NEGATIVE, help="Evaluate on the first N test images (0 = all 10k).")
@click.option("--space", default=None, help="Refuse genotypes with ops outside this space (darts, sgblock, invres or an op list).")
@_apply(COMMON_OPTIONS)
def augment(preset, out, resume, progress, log_every, **params) -> None:
    """Retrain a genotype from scratch on CIFAR-10 and report test accuracy, params, FLOPs and latency."""
    from .train import TRAIN_PRESETS, TrainConfig, run_training

    config, explicit = _config(TrainConfig, TRAIN_PRESETS, preset, params)
    out, resuming = _out_dir(out, resume, "augment")
    if not resuming and not config.genotype:
        raise click.UsageError("--genotype is required (a JSON file, a name such as darts_v2, or a Genotype(...) string)")
    summary = run_training(config, out, resume=resuming, explicit=explicit, progress=progress, log_every=log_every)
    click.echo(
        f"test accuracy {summary['test_acc']:.4f} | params {summary['params']:,} | "
        f"{summary['flops'] / 1e6:.1f} MFLOPs/image | CPU latency {summary['latency_ms']:.2f} ms/image"
    )
    click.echo(f"written: {out}")


@cli.command(context_settings=CONTEXT)
@click.argument("genotype")
@click.option("-o", "--output", default=None, help="Output prefix: writes PREFIX_normal.FMT and PREFIX_reduce.FMT [default: the genotype's name].")
@click.option("--format", "fmt", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True)
def plot(genotype, output, fmt) -> None:
    """Draw the normal and reduction cells of GENOTYPE (file, name, or legacy string).

    GENOTYPE may also be a search run directory: its alpha heatmaps and alpha trajectories
    are drawn into RUN/figures/ (PNG), and its final cells beside them.
    """
    from pathlib import Path

    from .genotype import load_genotype
    from .visualize import plot_genotype, plot_search_run

    if Path(genotype).is_dir():
        for path in plot_search_run(genotype):
            click.echo(str(path))
        prefix = Path(genotype) / "figures" / "cell"
        for path in plot_genotype(load_genotype(str(Path(genotype) / "genotype.json")), output or prefix, fmt):
            click.echo(str(path))
        return
    geno = load_genotype(genotype)
    if output is None:
        output = Path(genotype).stem if not genotype.startswith("Genotype(") else "genotype"
    for path in plot_genotype(geno, output, fmt):
        click.echo(str(path))


@cli.command(context_settings=CONTEXT)
@click.argument("run_or_model", metavar="RUN_OR_MODEL")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding cifar-10-batches-py [default: $DARTS_SG_DATA, else ./data].")
@click.option("--test-subset", type=NON_NEGATIVE, default=0, show_default=True, help="Evaluate on the first N test images (0 = all 10k).")
@click.option("--batch-size", type=POSITIVE, default=256, show_default=True, help="Evaluation batch size.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Device for the test pass (latency is always measured on the CPU, batch 1).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results to this JSON file.")
def evaluate(run_or_model, data_root, test_subset, batch_size, device, json_path) -> None:
    """Test accuracy, loss, accuracy per class and CPU latency of a trained network.

    RUN_OR_MODEL is a retraining run directory (written by `augment`) or its model.pt.
    """
    import json

    from .deploy import evaluate_network, load_trained
    from .engine import resolve_device
    from .io import atomic_write_text

    network, _ = load_trained(run_or_model)
    result = evaluate_network(network, data_root, test_subset, batch_size, str(resolve_device(device)))
    click.echo(f"test accuracy {100 * result['test_acc']:.2f}% | test loss {result['test_loss']:.4f} | {result['images']:,} images | "
               f"{result['params']:,} params | CPU latency {result['latency_ms']:.2f} ms/image (batch 1)")  # fmt: skip
    for name, acc in result["per_class_acc"].items():
        click.echo(f"  {name:<10} {'n/a' if acc is None else f'{100 * acc:6.2f}%'}")
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
        click.echo(f"written: {json_path}")


@cli.command(context_settings=CONTEXT)
@click.argument("run", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript", show_default=True,
              help="TorchScript (torch.jit, for C++/mobile runtimes) or ONNX (needs: pip install onnx onnxscript).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file [default: RUN/model.torchscript.pt or RUN/model.onnx].")
def export(run, fmt, output) -> None:
    """Export the trained network of a retraining run for deployment.

    The exported model takes normalised 32x32 RGB images (N, 3, 32, 32) and returns the 10 logits;
    OUTPUT.json beside it records the normalisation, the class names and the genotype.
    """
    from pathlib import Path

    from .deploy import export_network, load_trained

    network, config = load_trained(run)
    if output is None:
        folder = Path(run) if Path(run).is_dir() else Path(run).parent
        output = folder / ("model.torchscript.pt" if fmt == "torchscript" else "model.onnx")
    path = export_network(network, config, output, fmt)
    click.echo(f"written: {path} (and {path.name}.json)")


@cli.command(context_settings=CONTEXT)
@click.option("--spaces", default="darts,invres,sgblock", show_default=True, help="Comma-separated search spaces to compare.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds; each space is searched and retrained once per seed.")
@click.option("--preset", type=click.Choice(["paper", "quick", "smoke"]), default="quick", show_default=True,
              help="Scale: `quick` = the quick presets with 4-epoch searches on 640 + 640 images and 2-epoch retrainings on 6,000 images (about 2 h for 9 pairs on 2 cores); `paper` = the papers' settings.")
@click.option("--search-opt", multiple=True, metavar="KEY=VALUE", help="Override a search setting, e.g. --search-opt epochs=8 (repeatable).")
@click.option("--train-opt", multiple=True, metavar="KEY=VALUE", help="Override a retraining setting, e.g. --train-opt layers=8 (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding cifar-10-batches-py [default: $DARTS_SG_DATA, else ./data].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Experiment folder; run again to resume.")
@click.option("--progress/--no-progress", default=False, help="Show progress bars of the single runs.")
def compare(spaces, seeds, preset, search_opt, train_opt, data_root, out, progress) -> None:
    """Search and retrain in several spaces with several seeds, and write a comparison report."""
    from .compare import CompareSpec, parse_overrides, run_compare
    from .search import SearchConfig
    from .train import TrainConfig

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r} is not a comma-separated list of integers", param_hint="--seeds") from None
    spec = CompareSpec(
        spaces=[s.strip() for s in spaces.split(",") if s.strip()],
        seeds=seed_list,
        preset=preset,
        search_overrides=parse_overrides(search_opt, SearchConfig),
        train_overrides=parse_overrides(train_opt, TrainConfig),
        data_root=data_root,
    )
    rows = run_compare(spec, out, progress=progress, log=lambda m: click.echo(m, err=True))
    click.echo(f"{len(rows)} pairs finished; report: {out}/report.md")


def _run_with_clean_errors(command: click.Command, args=None, prog_name: str | None = None) -> None:
    """Run a click command; input errors become one line on stderr and exit code 2."""
    from .engine import Interrupted, NonFiniteLoss

    try:
        command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Interrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(128 + exc.signum)
    except NonFiniteLoss as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def main() -> None:
    """Entry point of the `darts-sg` console script."""
    _run_with_clean_errors(cli, prog_name="darts-sg")


def search_main() -> None:
    """Entry point of `python search.py`."""
    _run_with_clean_errors(search, prog_name="search.py")


def augment_main() -> None:
    """Entry point of `python augment.py`."""
    _run_with_clean_errors(augment, prog_name="augment.py")


if __name__ == "__main__":
    main()
