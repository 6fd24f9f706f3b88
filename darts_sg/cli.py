"""Command line: `darts-sg search|augment|evaluate|export|plot|compare` (and the `search.py` / `augment.py` scripts).

Commands only parse options and call library functions. Errors caused by input are printed
as one line on stderr with exit code 2; a run stopped by a signal exits with 128 + signal.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable

import click

from .jobs.augment import run_augment
from .jobs.search import run_search
from .model.genotype import MAX_NODES
from .speed.accelerate import FLAGS, device_policy
from .speed.precision import AMP_MODES
from .train.config import AUGMENT_PRESETS, DATASET_SETTINGS, MAX_SEED, SEARCH_PRESETS, AugmentConfig, SearchConfig
from .utils.distributed import leave_process_group
from .utils.errors import UserError

PRESET_HELP = "Settings bundle: paper (published settings), quick (~15-20 min on a 2-core CPU), smoke (seconds)."
SEARCH_PRESET_HELP = PRESET_HELP[:-1] + ", pc-darts (PC-DARTS, Xu et al. ICLR 2020: K=4, batch 256, w lr 0.1, alpha lr 6e-4, 15 warm-up epochs)."


def _apply(decorators: list[Callable]) -> Callable:
    def wrap(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return wrap


def _show(value: Any) -> str:
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _auto_default(name: str) -> str:
    """What an acceleration flag left on auto means, from the per-device policy."""
    cpu, cuda = (getattr(device_policy(kind), name) for kind in ("cpu", "cuda"))
    return f"auto = {_show(cpu)}" if cpu == cuda else f"auto = {_show(cpu)} on CPU, {_show(cuda)} on CUDA"


def help_with_default(cls: type, presets: dict[str, dict[str, Any]], name: str, text: str) -> str:
    """`text` followed by the default of the config field `name` of `cls`, and of each preset that changes it."""
    default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    if name in FLAGS and default is None:
        return f"{text} [default: {_auto_default(name)}]"
    by_preset = [f"{preset} {_show(values[name])}" for preset, values in presets.items() if values.get(name, default) != default]
    return f"{text} [default: {'; '.join([_show(default), *by_preset])}]"


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses NaN and the infinities (which pass its comparisons)."""

    def convert(self, value: Any, param, ctx) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
POSITIVE_FLOAT = FiniteFloatRange(min=0.0, min_open=True)
NON_NEGATIVE_FLOAT = FiniteFloatRange(min=0.0)


def common_options(cls: type, presets: dict[str, dict[str, Any]], preset_help: str = PRESET_HELP) -> list[Callable]:
    """The options shared by search and augment (same names, same meaning), with `cls`'s defaults."""

    def option(decls: str, name: str, text: str, **kwargs) -> Callable:
        return click.option(decls, help=help_with_default(cls, presets, name, text), **kwargs)

    flag = dict(default=None)
    return [
        click.option("--preset", type=click.Choice(list(presets)), default="paper", show_default=True, help=preset_help),
        option("--epochs", "epochs", "Training epochs.", type=POSITIVE),
        option("--batch-size", "batch_size", "Global batch size (split across processes under torchrun).", type=POSITIVE),
        option("--layers", "layers", "Number of cells.", type=POSITIVE),
        option("--init-channels", "init_channels", "Channels C of the first cells (doubled at each reduction).", type=POSITIVE),
        option("--seed", "seed", "Random seed (weights, alphas, data order, augmentation).", type=click.IntRange(0, MAX_SEED)),
        option("--grad-clip", "grad_clip", "Gradient-norm clip for the weights (0 = off).", type=NON_NEGATIVE_FLOAT),
        option("--sg-ratio", "sg_ratio", "Sandglass reduction ratio t.", type=POSITIVE_FLOAT),
        option("--sg-identity", "sg_identity", "Sandglass identity tensor multiplier.", type=FiniteFloatRange(0.0, 1.0, min_open=True)),
        option("--sg-min-hidden", "sg_min_hidden", "Floor of the sandglass bottleneck width.", type=POSITIVE),
        option("--ir-expansion", "ir_expansion", "Inverted-residual expansion ratio t.", type=POSITIVE),
        option("--channels-last/--no-channels-last", "channels_last", "NHWC memory format (oneDNN's fast layout on CPU).", **flag),
        option("--fast-dilated/--native-dilated", "fast_dilated", "Compute dilated depthwise convs as undilated ones on polyphase components (exact, faster on CPU).", **flag),
        option("--fast-batchnorm/--native-batchnorm", "fast_batchnorm", "Batch norm of channels-last CPU tensors with at most 16 channels or a channel count not a multiple of 16 on a wide view of the same memory (same results, several times faster there).", **flag),
        option("--keep-layout/--native-layout", "keep_layout", "Factorized reduce and global pooling whose gradients keep the channels-last layout (exact, faster on CPU).", **flag),
        option("--lean-relu6/--native-relu6", "lean_relu6", "ReLU6 (sandglass, inverted residual) keeping only its output for the backward pass (exact, less memory).", **flag),
        option("--lean-blocks/--plain-blocks", "lean_blocks", "Sandglass and inverted-residual blocks keeping only each batch norm's input for the backward pass, recomputing the normalised activation from it (same results up to float rounding; less memory for a few percent more time).", **flag),
        option("--wide-edges/--narrow-edges", "wide_edges", "Supernet cells running the mixed ops that read one node as one wide op (grouped convolutions, one batch norm; same results up to float rounding, a third of the kernels; on by default on CUDA only).", **flag),
        option("--uncounted-batchnorm/--counted-batchnorm", "uncounted_batchnorm", "Batch norms with a momentum that do not increment num_batches_tracked, which they never read (same results, one op less per batch norm; on by default on CUDA only).", **flag),
        option("--wide-cells/--narrow-cells", "wide_cells", "Derived (retraining) cells running their convolution edges of one shape as one wide op (grouped convolutions, one batch norm, one ReLU per state, drop path per wide op with the same masks; same results up to float rounding, fewer kernels; on by default on CUDA only).", **flag),
        option("--recompute-cells/--no-recompute-cells", "recompute_cells", "Keep only each cell's inputs in the forward pass and recompute its activations in the backward pass: exact, several times less peak memory, slower.", **flag),
        option("--amp", "amp", "Mixed precision: bf16 autocast (CPUs with bf16 instructions, Ampere or later GPUs), fp16 autocast with loss scaling (any GPU), or off; see benchmarks/.", type=click.Choice(AMP_MODES), default=None),
        option("--compile/--no-compile", "compile", "Regional torch.compile: each cell compiled in place, cells of one shape sharing the code; the first step's time (the compilation) is logged. Not bit-exact (fused kernels round differently); see benchmarks/.", **flag),
        option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", "Capture the whole training step as a CUDA graph after a few eager steps and replay it: one launch per step instead of thousands (CUDA; the same computation, so the same results up to the fused optimizers' float rounding). Left off, with one line saying why, under fp16, torchrun or --compile.", **flag),
        option("--checkpoint-every", "checkpoint_every", "Also checkpoint every N steps (0 = once per epoch).", type=NON_NEGATIVE),
        option("--deterministic/--no-deterministic", "deterministic", "Deterministic algorithms (and no cudnn.benchmark): a killed and resumed run ends bit-identical.", **flag),
        option("--threads", "threads", "CPU threads for torch (0 = torch's default).", type=NON_NEGATIVE),
        option("--device", "device", "Device: CUDA when present (auto), or forced; it decides the auto defaults of the speed flags.", type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding cifar-10-batches-py or cifar-100-python (when not given: $DARTS_SG_DATA, else ./data); downloaded there if absent. ImageNet: the folder holding train/ and val/."),
        click.option("--out", type=click.Path(file_okay=False), help="Run directory to create (when not given: runs/<job>-<time>)."),
        click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this directory from its last checkpoint."),
        click.option("--progress/--no-progress", default=True, help="Show progress: a bar per epoch on a terminal, else a line every --log-every seconds; both with the ETA of the epoch and of the whole run."),
        click.option("--log-every", type=NON_NEGATIVE_FLOAT, default=60.0, show_default=True, metavar="SECONDS",
                     help="Off a terminal (nohup, a scheduler, CI): print step, loss, accuracy, images/s and ETAs every SECONDS (0 = every step)."),
    ]  # fmt: skip


def _search_option(decls: str, name: str, text: str, **kwargs) -> Callable:
    return click.option(decls, help=help_with_default(SearchConfig, SEARCH_PRESETS, name, text), **kwargs)


def _augment_option(decls: str, name: str, text: str, **kwargs) -> Callable:
    return click.option(decls, help=help_with_default(AugmentConfig, AUGMENT_PRESETS, name, text), **kwargs)




def _config(
    cls, presets: dict[str, dict], preset: str, params: dict[str, Any], base: dict[str, Any] | None = None
) -> tuple[Any, set[str]]:
    """Defaults < `base` (settings of the data set) < preset < explicitly given options;
    returns (config, names of explicit options)."""
    explicit = {k for k, v in params.items() if v is not None}
    values = {**(base or {}), **presets[preset], **{k: params[k] for k in explicit}}
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
@_search_option("--dataset", "dataset", "Data set searched on; its training set is split in halves for weights and alphas.", type=click.Choice(["cifar10", "cifar100"]))
@_search_option("--warmup-epochs", "warmup_epochs", "Train the weights alone for the first N epochs, alphas frozen (PC-DARTS: 15 of 50).", type=NON_NEGATIVE)
@_search_option("--max-skip", "max_skip", "P-DARTS (Chen et al. 2019): at most K skip connections in the derived normal cell; the weakest extra skips take their edge's next-best op (none = no cap).", type=NON_NEGATIVE)
@_search_option("--early-stop-skips", "early_stop_skips", "DARTS+ (Liang et al. 2019): stop the search when the derived normal cell has more than K skip connections (DARTS+: K=1; none = off).", type=NON_NEGATIVE)
@_search_option("--early-stop-epochs", "early_stop_epochs", "With --early-stop-skips: stop only after E epochs in a row over the limit (DARTS+: 1).", type=POSITIVE)
@_search_option("--cost", "cost", "Search under a budget (FBNet, ProxylessNAS): add the expected parameters, FLOPs or latency (a lookup table timed once per op and position, cached in RUN/latency.json) of the derived network (at --cost-channels, --cost-layers) to the alpha loss; metrics log it with the derived genotype's true cost.", type=click.Choice(["params", "flops", "latency"]))
@_search_option("--cost-weight", "cost_weight", "With --cost: weight of the cost term (without a target, the term starts at this value and pulls towards cheaper ops).", type=NON_NEGATIVE_FLOAT)
@_search_option("--cost-target", "cost_target", "With --cost: a budget in millions of parameters or FLOPs, or in ms; only the excess over it is penalised, and the derived genotype is made to meet it when any genotype of the space can.", type=POSITIVE_FLOAT)
@_search_option("--cost-device", "cost_device", "With --cost latency: the device the ops are timed on, at batch 1.", type=click.Choice(["cpu", "cuda"]))
@_search_option("--cost-threads", "cost_threads", "With --cost latency: CPU threads while timing (1: the mobile setting).", type=POSITIVE)
@_search_option("--cost-channels", "cost_channels", "With --cost: channels C of the derived network the cost is counted for.", type=POSITIVE)
@_search_option("--cost-layers", "cost_layers", "With --cost: cells of the derived network the cost is counted for.", type=POSITIVE)
@_search_option("--ops", "ops", "Search space (darts, sgblock, invres) or a comma-separated list of ops.", default=None)
@_search_option("--order", "order", "1: first-order DARTS; 2: second order (unrolled).", type=click.IntRange(1, 2))
@_search_option("--nodes", "nodes", "Intermediate nodes per cell.", type=click.IntRange(1, MAX_NODES))
@_search_option("--subset", "subset", "Use N images from each half of the training set (0 = all 25k).", type=NON_NEGATIVE)
@_search_option("--w-lr", "w_lr", "Weight learning rate (cosine schedule).", type=POSITIVE_FLOAT)
@_search_option("--w-lr-min", "w_lr_min", "Final weight learning rate.", type=NON_NEGATIVE_FLOAT)
@_search_option("--w-momentum", "w_momentum", "Weight SGD momentum.", type=NON_NEGATIVE_FLOAT)
@_search_option("--w-weight-decay", "w_weight_decay", "Weight decay of the weights.", type=NON_NEGATIVE_FLOAT)
@_search_option("--alpha-lr", "alpha_lr", "Architecture (Adam) learning rate.", type=POSITIVE_FLOAT)
@_search_option("--alpha-weight-decay", "alpha_weight_decay", "Architecture weight decay (L2 inside Adam; 0 lets a short search decide: README, Search).", type=NON_NEGATIVE_FLOAT)
@_search_option("--partial-channels", "partial_channels", "PC-DARTS: each mixed op sees 1/K of the channels, with edge normalisation (1 = off).", type=POSITIVE)
@_search_option("--figures/--no-figures", "figures", "Draw the alpha heatmaps and trajectories after every epoch (RUN/figures/ and TensorBoard images; about 2 s each on one CPU thread). `darts-sg plot RUN` draws them afterwards.", default=None)
@_search_option("--skip-none/--compute-none", "skip_none", "Do not compute the zero `none` op (exact; fixed for a run).", default=None)
@_search_option("--share-relu/--no-share-relu", "share_relu", "One ReLU per edge for its separable and dilated convs (exact, less memory).", default=None)
@_search_option("--fused-sum/--no-fused-sum", "fused_sum", "Accumulate each edge's weighted sum in place (exact, less memory).", default=None)
@_apply(common_options(SearchConfig, SEARCH_PRESETS, SEARCH_PRESET_HELP))
def search(preset, out, resume, progress, log_every, **params) -> None:
    """Search a cell architecture on CIFAR-10 or CIFAR-100 (bilevel DARTS) and write the derived genotype."""
    config, explicit = _config(SearchConfig, SEARCH_PRESETS, preset, params)
    out, resuming = _out_dir(out, resume, "search")
    genotype = run_search(config, out, resume=resuming, explicit=explicit, progress=progress, log_every=log_every)
    click.echo(f"genotype: {genotype}")
    click.echo(f"written: {out}/genotype.json")


@cli.command(context_settings=CONTEXT)
@_augment_option("--dataset", "dataset", "cifar10, cifar100, or imagenet: the DARTS ImageNet network (two stride-2 stems, 14 cells, C=48, 250 epochs, batch 128, lr 0.1 x 0.97 per epoch, wd 3e-5, label smoothing 0.1) trained on --data-root with train/ and val/ image folders.", type=click.Choice(["cifar10", "cifar100", "imagenet"]))
@click.option("--genotype", "genotype", default=None, help="Genotype: JSON file, name in genotypes/ (e.g. darts_v2), or a legacy Genotype(...) string (required unless --resume).")
@_augment_option("--lr", "lr", "SGD learning rate (cosine to 0).", type=POSITIVE_FLOAT)
@_augment_option("--momentum", "momentum", "SGD momentum.", type=NON_NEGATIVE_FLOAT)
@_augment_option("--weight-decay", "weight_decay", "Weight decay.", type=NON_NEGATIVE_FLOAT)
@_augment_option("--auxiliary-weight", "auxiliary_weight", "Loss weight of the auxiliary head (0 = no head).", type=NON_NEGATIVE_FLOAT)
@_augment_option("--drop-path", "drop_path", "Final drop-path probability, ramped linearly over epochs.", type=FiniteFloatRange(0.0, 1.0, max_open=True))
@_augment_option("--cutout", "cutout", "Cutout square side in pixels (0 = off).", type=NON_NEGATIVE)
@_augment_option("--train-subset", "train_subset", "Train on the first N training images (0 = all 50k).", type=NON_NEGATIVE)
@_augment_option("--test-subset", "test_subset", "Evaluate on the first N test images (0 = all 10k).", type=NON_NEGATIVE)
@click.option("--space", default=None, help="Refuse genotypes with ops outside this space (darts, sgblock, invres or an op list).")
@_augment_option("--lr-decay", "lr_decay", "Multiply the learning rate by this every epoch instead of the cosine schedule (0 = cosine; imagenet: 0.97).", type=FiniteFloatRange(0.0, 1.0, max_open=True))
@_augment_option("--label-smoothing", "label_smoothing", "Label smoothing of the training loss (imagenet: 0.1).", type=FiniteFloatRange(0.0, 1.0, max_open=True))
@_augment_option("--image-size", "image_size", "ImageNet crop size in pixels; evaluation resizes to 256/224 of it.", type=click.IntRange(min=32))
@_augment_option("--workers", "workers", "Processes decoding ImageNet images (0 = in the main process).", type=NON_NEGATIVE)
@_apply(common_options(AugmentConfig, AUGMENT_PRESETS))
def augment(preset, out, resume, progress, log_every, **params) -> None:
    """Augment: retrain a genotype from scratch (CIFAR-10, CIFAR-100 or ImageNet) and report test accuracy, params, FLOPs and latency."""
    base = DATASET_SETTINGS[params["dataset"] or "cifar10"]
    config, explicit = _config(AugmentConfig, AUGMENT_PRESETS, preset, params, base)
    out, resuming = _out_dir(out, resume, "augment")
    if not resuming and not config.genotype:
        raise click.UsageError("--genotype is required (a JSON file, a name such as darts_v2, or a Genotype(...) string)")
    summary = run_augment(config, out, resume=resuming, explicit=explicit, progress=progress, log_every=log_every)
    click.echo(
        f"test accuracy {summary['test_acc']:.4f} | params {summary['params']:,} | "
        f"{summary['multiply_adds'] / 1e6:.1f}M multiply-adds/image ({summary['image_size']}px) | "
        f"CPU latency {summary['latency_ms']:.2f} ms/image"
    )
    click.echo(f"written: {out}")


@cli.command(context_settings=CONTEXT)
@click.argument("genotype")
@click.option("-o", "--output", default=None, help="Output prefix: writes PREFIX_normal.FMT and PREFIX_reduce.FMT (when not given: the genotype's name).")
@click.option("--format", "fmt", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True)
def plot(genotype, output, fmt) -> None:
    """Draw the normal and reduction cells of GENOTYPE (file, name, or legacy string).

    GENOTYPE may also be a search run directory: its alpha heatmaps and alpha trajectories
    are drawn into RUN/figures/ (PNG), and its final cells beside them.
    """
    from pathlib import Path

    from .model.genotype import load_genotype
    from .plots.visualize import plot_genotype, plot_search_run

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


def _scale_defaults(key: str) -> str:
    """`(when not given: ...)` with each comparison scale's own value of `key` (experiment.plan.COMPARE_SCALES)."""
    from .experiment.plan import COMPARE_SCALES, CompareSpec

    values = {name: getattr(CompareSpec.for_preset(name), key) for name in COMPARE_SCALES}
    shown = {name: ",".join(map(str, v)) if isinstance(v, list) else str(v) for name, v in values.items()}
    return "(when not given, the scale's own: " + "; ".join(f"{name} {v or 'none'}" for name, v in shown.items()) + ")."


@cli.command(context_settings=CONTEXT)
@click.argument("run_or_model", metavar="RUN_OR_MODEL")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding cifar-10-batches-py (when not given: $DARTS_SG_DATA, else ./data).")
@click.option("--test-subset", type=NON_NEGATIVE, default=0, show_default=True, help="Evaluate on the first N test images (0 = all 10k).")
@click.option("--batch-size", type=POSITIVE, default=256, show_default=True, help="Evaluation batch size.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Device for the test pass (latency is always measured on the CPU, batch 1).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results to this JSON file.")
def evaluate(run_or_model, data_root, test_subset, batch_size, device, json_path) -> None:
    """Test accuracy, loss, accuracy per class and CPU latency of a trained network.

    RUN_OR_MODEL is a retraining run directory (written by `augment`) or its model.pt.
    """
    import json

    from .jobs.deploy import evaluate_network, load_trained
    from .utils.io import atomic_write_text, make_parent
    from .train.rundir import check_output
    from .train.process import resolve_device

    if json_path:
        check_output(json_path, "--json file")  # before evaluating: a path that cannot be written would lose the result
    network, _ = load_trained(run_or_model)
    result = evaluate_network(network, data_root, test_subset, batch_size, str(resolve_device(device)))
    click.echo(f"test accuracy {100 * result['test_acc']:.2f}% | test loss {result['test_loss']:.4f} | {result['images']:,} images | "
               f"{result['params']:,} params | CPU latency {result['latency_ms']:.2f} ms/image (batch 1)")  # fmt: skip
    for name, acc in result["per_class_acc"].items():
        click.echo(f"  {name:<10} {'n/a' if acc is None else f'{100 * acc:6.2f}%'}")
    if json_path:
        atomic_write_text(make_parent(json_path), json.dumps(result, indent=2) + "\n")
        click.echo(f"written: {json_path}")


@cli.command(context_settings=CONTEXT)
@click.argument("run", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript", show_default=True,
              help="TorchScript (torch.jit, for C++/mobile runtimes) or ONNX (needs: pip install onnx onnxscript).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file (when not given: RUN/model.torchscript.pt or RUN/model.onnx).")
def export(run, fmt, output) -> None:
    """Export the trained network of a retraining run for deployment.

    The exported model takes normalised 32x32 RGB images (N, 3, 32, 32) and returns the 10 logits;
    OUTPUT.json beside it records the normalisation, the class names and the genotype.
    """
    from pathlib import Path

    from .jobs.deploy import export_network, load_trained

    network, config = load_trained(run)
    if output is None:
        folder = Path(run) if Path(run).is_dir() else Path(run).parent
        output = folder / ("model.torchscript.pt" if fmt == "torchscript" else "model.onnx")
    path = export_network(network, config, output, fmt)
    click.echo(f"written: {path} (and {path.name}.json)")


def _int_list(text: str, option: str, allow_empty: bool = True) -> list[int]:
    """A comma-separated list of integers, or a one-line usage error naming `option`."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=option) from None
    if not values and not allow_empty:
        raise click.BadParameter("give at least one integer, e.g. 0,1,2", param_hint=option)
    return values


@cli.command(context_settings=CONTEXT)
@click.option("--spaces", default="darts,invres,sgblock", show_default=True, help="Comma-separated search spaces to compare.")
@click.option("--seeds", default=None, help="Comma-separated search seeds per space " + _scale_defaults("seeds"))
@click.option("--random", "random_count", type=NON_NEGATIVE, default=None,
              help="Random genotypes per space, retrained under the same protocol (Li & Talwalkar 2019) " + _scale_defaults("random"))
@click.option("--references", default=None, help="Comma-separated published genotypes retrained beside them, e.g. darts_v2 " + _scale_defaults("references"))
@click.option("--reference-seeds", default="0", show_default=True,
              help="Comma-separated seeds each reference is retrained with: several measure the retraining noise of one cell.")
@click.option("--search-only", is_flag=True,
              help="Run the searches and retrain nothing: the report compares the genotypes (params, FLOPs, sandglass "
                   "blocks, how firmly the alphas chose); random and reference genotypes are drawn or copied only.")
@click.option("--preset", type=click.Choice(["paper", "medium", "quick", "smoke"]), default="quick", show_default=True,
              help="Scale: `medium` = 1,092-step searches (5 cells, C=8) and 10-epoch retrainings at C=16, 8 cells on all 50k images, "
                   "4 seeds, 3 random genotypes per space and DARTS_V2 (about 40 h on 2 cores, from the units run so far: README); `quick` = a 2-hour smoke test of the "
                   "pipeline; `smoke` = tiny networks on a few images, seconds per unit (tests, trying the command); `paper` = the papers' settings.")
@click.option("--search-opt", multiple=True, metavar="KEY=VALUE", help="Override a search setting, e.g. --search-opt epochs=8 (repeatable).")
@click.option("--cost", type=click.Choice(["params", "flops", "latency"]), default=None,
              help="Every search under a budget (as `search --cost`); the report then draws accuracy against this cost (else params), its Pareto front marked.")
@click.option("--cost-weight", type=NON_NEGATIVE_FLOAT, default=None, help="With --cost: the cost term's weight in every search (as `search --cost-weight`).")
@click.option("--cost-target", type=POSITIVE_FLOAT, default=None, help="With --cost: every search's budget (as `search --cost-target`).")
@click.option("--augment-opt", multiple=True, metavar="KEY=VALUE", help="Override an augment (retraining) setting, e.g. --augment-opt layers=8 (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding cifar-10-batches-py (when not given: $DARTS_SG_DATA, else ./data).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Experiment folder; run again to resume.")
@click.option("--report-only", is_flag=True, help="Rebuild the report from the finished units without running anything.")
@click.option("--progress/--no-progress", default=False, help="Show progress bars of the single runs (with --jobs 1).")
@click.option("--jobs", type=POSITIVE, default=None,
              help="Units run at once, in worker processes sharing the CPU's threads: on 2 cores, 2 jobs train more images per "
                   "second than 1 (benchmarks/bench_parallel_units.py). With GPUs, the workers spread over them, each seeing "
                   "only its own. A unit's result does not depend on the units beside it; the thread count "
                   "changes float rounding, as another CPU model does. When not given: 1 on a CPU, one per GPU on a machine with GPUs.")
@click.option("--units-per-gpu", type=POSITIVE, default=None, metavar="K",
              help="On a machine with GPUs: K units on each GPU at once (a DARTS search leaves a large GPU mostly idle; "
                   "benchmarks/bench_parallel_units.py --device cuda measures what K gives).")
@click.option("--list-units", is_flag=True, help="List the units (number, name, kind, done / running / waiting) and exit; "
                                                 "a scheduler runs each with --unit.")
@click.option("--json", "as_json", is_flag=True, help="With --list-units: print the list as JSON.")
@click.option("--unit", metavar="NAME|NUMBER", help="Run this one unit (a name or number from --list-units), then rebuild the "
                                                    "report: one scheduler job, or one torchrun job on several GPUs.")
@click.option("--launcher", type=click.Choice(["processes", "slurm", "submitit-local"]), default="processes", show_default=True,
              help="processes: run the units here (--jobs); slurm: submit one Slurm job per unfinished unit through submitit "
                   "(pip install 'darts-sg[slurm]') and return; submitit-local: the same jobs as processes of this machine "
                   "(submitit's local executor: the Slurm code path without a cluster).")
@click.option("--partition", help="--launcher slurm: the partition to submit to (when not given: the cluster's default).")
@click.option("--gpus-per-unit", type=NON_NEGATIVE, default=1, show_default=True,
              help="--launcher slurm: GPUs of each unit's job, one task per GPU joined as by torchrun (0: CPU only).")
@click.option("--cpus-per-unit", type=POSITIVE, default=8, show_default=True, help="--launcher slurm: CPU cores per GPU (per task), the torch threads.")
@click.option("--time", "time_limit", default="24:00:00", show_default=True, metavar="TIME",
              help="--launcher slurm: each job's time limit: minutes, HH:MM:SS or D-HH:MM:SS; a unit stopped by it keeps its "
                   "checkpoint and resumes when resubmitted.")
@click.option("--array-parallelism", type=POSITIVE, default=256, show_default=True, help="--launcher slurm: jobs of the array running at once.")
@click.option("--slurm-opt", multiple=True, metavar="KEY=VALUE", help="--launcher slurm: a further sbatch option, e.g. --slurm-opt account=myproj --slurm-opt qos=high (repeatable).")
@click.option("--wait", is_flag=True, help="--launcher slurm: wait for the jobs to end, then rebuild the report.")
def compare(spaces, seeds, random_count, references, reference_seeds, search_only, preset, search_opt, cost, cost_weight, cost_target, augment_opt, data_root, out, report_only, progress, jobs,
            units_per_gpu, list_units, as_json, unit, launcher, partition, gpus_per_unit, cpus_per_unit, time_limit,
            array_parallelism, slurm_opt, wait) -> None:  # fmt: skip
    """Search and augment (retrain) in several spaces with several seeds, beside random and published genotypes, and report."""
    from .experiment.compare import CompareSpec, parse_overrides, run_compare

    seed_list = _int_list(seeds, "--seeds") if seeds is not None else None
    reference_seed_list = _int_list(reference_seeds, "--reference-seeds", allow_empty=False)
    modes = [name for name, given in (("--report-only", report_only), ("--list-units", list_units), ("--unit", unit is not None),
                                      ("--launcher " + launcher, launcher != "processes")) if given]  # fmt: skip
    if len(modes) > 1:
        raise click.UsageError(f"give one of {', '.join(modes)}")
    if as_json and not list_units:
        raise click.UsageError("--json goes with --list-units")
    context = click.get_current_context()
    slurm_given = [param.opts[0] for param in context.command.params
                   if param.name in ("partition", "gpus_per_unit", "cpus_per_unit", "time_limit", "array_parallelism", "slurm_opt", "wait")
                   and context.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE]  # fmt: skip
    if slurm_given and launcher == "processes":
        raise click.UsageError(f"only with --launcher slurm or submitit-local: {', '.join(slurm_given)}")
    spec = CompareSpec.for_preset(
        preset,
        spaces=[s.strip() for s in spaces.split(",") if s.strip()],
        seeds=seed_list,
        random=random_count,
        references=[r.strip() for r in references.split(",") if r.strip()] if references is not None else None,
        reference_seeds=reference_seed_list,
        search_only=search_only,
        search_overrides={**parse_overrides(search_opt, SearchConfig),
                          **{k: v for k, v in (("cost", cost), ("cost_weight", cost_weight), ("cost_target", cost_target)) if v is not None}},
        augment_overrides=parse_overrides(augment_opt, AugmentConfig),
        data_root=data_root,
    )
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if list_units:
        _list_units(spec, out, as_json)
    elif unit is not None:
        from .experiment.compare import run_named_unit
        from .utils.distributed import is_main_process

        ran = run_named_unit(spec, out, unit, log=log, progress=progress)
        if is_main_process():
            click.echo(f"report: {out}/report.md" if ran else "nothing done: the unit is running in another process")
    elif launcher != "processes":
        _submit(spec, out, launcher, partition, gpus_per_unit, cpus_per_unit, time_limit, array_parallelism, slurm_opt, wait, log)
    else:
        rows = run_compare(spec, out, progress=progress, log=log, report_only=report_only, jobs=jobs, units_per_gpu=units_per_gpu)
        from pathlib import Path

        from .experiment.parallel import claimed_elsewhere
        from .experiment.plan import units_of

        pending = [unit for unit, row in zip(units_of(spec), rows) if row is None]
        elsewhere = len(claimed_elsewhere(Path(out), pending)) if pending else 0
        running = f", {elsewhere} running in another process" if elsewhere else ""
        click.echo(f"{sum(r is not None for r in rows)} of {len(rows)} units finished{running}; report: {out}/report.md")


def _list_units(spec, out: str, as_json: bool) -> None:
    """`compare --list-units`: one line per unit (or JSON), and the counts on stderr."""
    import json

    from .experiment.compare import prepare_experiment, unit_states

    states = unit_states(spec, prepare_experiment(spec, out, write=False))
    if as_json:
        click.echo(json.dumps(states, indent=2))
    else:
        width = max(len(s["name"]) for s in states) if states else 0
        for s in states:
            note = f"  ({s['where']})" if "where" in s else "  (resumes from its checkpoint)" if s["state"] == "waiting" and s["started"] else ""
            click.echo(f"{s['number']:>3}  {s['name']:<{width}}  {s['kind']:<9}  {s['state']}{note}")
    counts = {state: sum(s["state"] == state for s in states) for state in ("done", "running", "waiting")}
    click.echo(f"{len(states)} units: " + ", ".join(f"{n} {state}" for state, n in counts.items()), err=True)


def _submit(spec, out, launcher, partition, gpus_per_unit, cpus_per_unit, time_limit, array_parallelism, slurm_opt, wait, log) -> None:
    """`compare --launcher slurm|submitit-local`: submit the unfinished units, and with `wait` wait for them."""
    from .experiment.slurm import LaunchOptions, parse_time, submit_units, wait_for_units

    options = {}
    for item in slurm_opt:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--slurm-opt")
        options[key.strip().replace("_", "-")] = value
    launch = LaunchOptions(
        cluster="slurm" if launcher == "slurm" else "local", partition=partition,
        gpus_per_unit=gpus_per_unit, cpus_per_unit=cpus_per_unit, time_min=parse_time(time_limit),
        array_parallelism=array_parallelism, slurm_options=options,
    )  # fmt: skip
    jobs = submit_units(spec, out, launch, log)
    if wait and jobs:
        rows = wait_for_units(spec, out, jobs, log)
        click.echo(f"{sum(r is not None for r in rows)} of {len(rows)} units finished; report: {out}/report.md")
    elif jobs:
        click.echo(f"{len(jobs)} jobs submitted; follow them with: darts-sg compare ... --out {out} --list-units")


def _run_with_clean_errors(command: click.Command, args=None, prog_name: str | None = None) -> None:
    """Run a click command; input errors become one line on stderr and exit code 2."""
    from .train.engine import Interrupted, NonFiniteLoss

    try:
        command.main(args=args, prog_name=prog_name, standalone_mode=False)
        leave_process_group()
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
        leave_process_group()  # every process stopped after the same step: no collective is in flight
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


if __name__ == "__main__":  # `python -m darts_sg` is the same command, relaunched with tcmalloc first (entry.py)
    main()
