"""Using a trained network: load it from its retraining run, evaluate it on the test set, export it.

A retraining run (``darts-sg augment``) holds ``config.json`` (the genotype and sizes) and
``model.pt`` (a ``state_dict``, read with ``weights_only=True``); that is all a network needs.
Exports (TorchScript, ONNX) take normalised 32x32 RGB images, ``(N, 3, 32, 32)`` float32, and
return the 10 class logits; ``<file>.json`` beside them records the normalisation, the class
names and the genotype.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..model.measure import cpu_latency_ms
from ..model.network import Network, count_params
from ..train.config import AugmentConfig
from ..train.data import CIFAR_MEAN, CIFAR_STD, BatchLoader, load_cifar10
from ..train.rundir import check_output
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_text, load_checkpoint, make_parent, read_json

__all__ = ["CIFAR10_CLASSES", "EXPORT_FORMATS", "load_trained", "evaluate_network", "export_network"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_HINT = "ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript (or pip install 'darts-sg[onnx]')"


class DeployError(UserError):
    """A trained network that cannot be loaded, evaluated or exported as asked."""


def load_trained(run_or_model: str | Path) -> tuple[Network, AugmentConfig]:
    """The trained network (eval mode, CPU, plain layout) of a retraining run directory or of its model.pt."""
    path = Path(run_or_model)
    run = path.parent if path.is_file() else path
    model_path = path if path.is_file() else run / "model.pt"
    config_path = run / "config.json"
    if not config_path.is_file() or not model_path.is_file():
        raise DeployError(
            f"{path} is not a finished retraining run (it needs config.json and model.pt); "
            "give the folder written by `darts-sg augment` or its model.pt"
        )
    try:
        config = AugmentConfig.from_dict(read_json(config_path, "run configuration"))
    except (UserError, TypeError) as exc:
        raise DeployError(f"{config_path} is not a retraining configuration ({exc})") from None
    if not config.genotype:
        raise DeployError(f"{config_path} records no genotype: is {run} a search run? evaluate a retraining run")
    from ..model.genotype import load_genotype

    if config.dataset != "cifar10":
        raise DeployError(f"{run} was trained on {config.dataset}; evaluate and export support CIFAR-10 runs so far")
    # The plain network (no device substitutes): the same weights, and the most portable graph to export.
    network = Network(load_genotype(config.genotype), config.init_channels, config.layers, 10,
                      auxiliary=config.auxiliary_weight > 0, options=config.op_options())  # fmt: skip
    try:
        network.load_state_dict(load_checkpoint(model_path))
    except RuntimeError as exc:
        raise DeployError(f"{model_path} does not match the network of {config_path}: {str(exc).splitlines()[0]}") from None
    return network.eval(), config


@torch.no_grad()
def evaluate_network(
    network: Network, data_root: str | None = None, test_subset: int = 0, batch_size: int = 256, device: str = "cpu"
) -> dict[str, Any]:
    """Test accuracy and loss, accuracy per class, and CPU latency (batch 1) of a trained network."""
    test = load_cifar10(data_root, train=False, download=False)
    if test_subset:
        test = test.slice(0, test_subset)
    model = network.to(device).eval()
    loader = BatchLoader(test, batch_size, shuffle=False, drop_last=False, device=device)
    loss_sum, correct, count = 0.0, torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long)
    start = time.perf_counter()
    for x, y in loader.iterate(0):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        hits = (logits.argmax(1) == y).long()
        correct += torch.bincount(y.cpu(), weights=hits.cpu(), minlength=10).long()
        count += torch.bincount(y.cpu(), minlength=10)
    seconds = time.perf_counter() - start
    total = int(count.sum())
    params = count_params(model) - (count_params(model.aux_head) if model.aux_head is not None else 0)
    return {
        "test_acc": int(correct.sum()) / max(total, 1),
        "test_loss": loss_sum / max(total, 1),
        "images": total,
        "per_class_acc": {name: (int(c) / int(n) if n else None) for name, c, n in zip(CIFAR10_CLASSES, correct, count)},
        "params": params,
        "latency_ms": cpu_latency_ms(model, batch=1, channels_last=False),
        "images_per_s": total / seconds if seconds > 0 else 0.0,
    }


def export_network(network: Network, config: AugmentConfig, path: str | Path, fmt: str) -> Path:
    """Export the network to `path` as TorchScript (traced) or ONNX, with `<path>.json` describing its input."""
    if fmt not in EXPORT_FORMATS:
        raise DeployError(f"unknown export format {fmt!r}; use {' or '.join(EXPORT_FORMATS)}")
    path = check_output(path)
    meta_path = check_output(path.with_name(path.name + ".json"))
    make_parent(path)
    model = network.cpu().eval()
    example = torch.zeros(1, 3, 32, 32)
    buffer = io.BytesIO()
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():  # torch.jit's deprecation notice: TorchScript is the format asked for
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(torch.jit.trace(model, example), buffer)
        else:
            _export_onnx(model, example, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    meta = {
        "format": fmt,
        "input": {"shape": ["N", 3, 32, 32], "dtype": "float32", "layout": "RGB, (pixel / 255 - mean) / std"},
        "mean": list(CIFAR_MEAN),
        "std": list(CIFAR_STD),
        "classes": list(CIFAR10_CLASSES),
        "output": "logits (N, 10)",
        "genotype": json.loads(config.genotype),
        "init_channels": config.init_channels,
        "layers": config.layers,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return path


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, buffer: io.BytesIO) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise DeployError(ONNX_HINT) from None
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}})  # fmt: skip
    program.save(buffer)
