"""The augment job: retraining a genotype's network from scratch (DARTS calls it "augment").

The job run by the engine (`AugmentJob`), its training step (`AugmentStep`) and `run_augment`; the
settings and presets live in ``darts_sg.train.config``, FLOPs and latency in ``darts_sg.model.measure``.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ..model.genotype import load_genotype
from ..model.measure import cpu_latency_ms, flops_per_image
from ..model.network import Network, count_params
from ..model.ops import resolve_space
from ..speed.accelerate import Acceleration, accelerate, resolve_acceleration
from ..speed.cuda_graphs import GraphedStep, device_learning_rates, load_optimizer_state
from ..speed.fused_optim import optimizer_kwargs
from ..speed.precision import autocast, grad_scaler, load_scaler_state
from ..train.config import AugmentConfig
from ..train.data import DATASETS, BatchLoader, DataAugmentation, load_cifar
from ..train.engine import evaluate, graphed_batch_sums, restore, weight_step
from ..train.hparams import log_hparams
from ..train.launch import building, fit_run, launched_as_main, log, log_memory, prepare_run, record_run, resume_config
from ..train.rundir import RunDirectory, RunError
from ..utils.distributed import is_main_process
from ..utils.errors import UserError
from ..utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["AugmentJob", "AugmentStep", "run_augment"]


class AugmentJob:
    """Supervised training of a genotype's network with cutout, drop path and an auxiliary head."""

    kind = "train"  # the checkpoint's kind: the word of earlier versions, kept so their checkpoints resume

    def __init__(
        self,
        config: AugmentConfig,
        run: RunDirectory,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        acceleration: Acceleration | None = None,
    ):
        self.config = config
        self.run = run
        self.device = device
        self.acceleration = acceleration or resolve_acceleration(config, device)
        allowed = resolve_space(config.space) if config.space else None
        self.genotype = load_genotype(config.genotype, allowed)
        loader = dict(device=device, channels_last=self.acceleration.channels_last, rank=rank, world_size=world)
        if config.dataset == "imagenet":
            num_classes = self._imagenet_loaders(loader)
        else:
            num_classes = self._cifar_loaders(loader)
        torch.manual_seed(config.seed)
        network = self._network(num_classes)
        self.model = accelerate(network, device, self.acceleration)
        self.step = AugmentStep(self.model, config, device, self.acceleration)
        self.optimizer, self.scaler = self.step.optimizer, self.step.scaler
        self.eval_sums = graphed_batch_sums(self.model, log) if self.step.graphed is not None else None
        if config.lr_decay:
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, config.lr_decay)
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.epochs, eta_min=0.0)

    def _network(self, num_classes: int) -> Network:
        config = self.config
        size = dict(C=config.init_channels, layers=config.layers, num_classes=num_classes)
        auxiliary = config.auxiliary_weight > 0
        if config.dataset == "imagenet":
            from ..model.imagenet import build_imagenet_network

            return build_imagenet_network(self.genotype, **size, auxiliary=auxiliary, options=config.op_options())
        return Network(self.genotype, **size, auxiliary=auxiliary, options=config.op_options())

    def _cifar_loaders(self, loader: dict[str, Any]) -> int:
        config = self.config
        train = load_cifar(config.dataset, config.data_root, train=True)
        test = load_cifar(config.dataset, config.data_root, train=False, download=False)
        if config.train_subset:
            train = train.slice(0, config.train_subset)
        if config.test_subset:
            test = test.slice(0, config.test_subset)
        self.train_loader = BatchLoader(train, config.batch_size, DataAugmentation(cutout=config.cutout), seed=config.seed, **loader)
        self.test_loader = BatchLoader(test, 256, shuffle=False, drop_last=False, **loader)
        return DATASETS[config.dataset].num_classes

    def _imagenet_loaders(self, loader: dict[str, Any]) -> int:
        from ..train.folder_data import FolderLoader, image_folder

        config = self.config
        if config.data_root is None:
            raise UserError("--dataset imagenet needs --data-root DIR holding train/ and val/ image folders")
        train, val = image_folder(config.data_root, "train"), image_folder(config.data_root, "val")
        if train.classes != val.classes:
            raise UserError(f"{config.data_root}: train/ and val/ hold different class folders; they must match")
        if min(len(train), config.train_subset or len(train)) < config.batch_size:
            raise UserError(f"{config.data_root}/train holds fewer images than one batch ({config.batch_size}); lower --batch-size")
        size = dict(image_size=config.image_size, workers=config.workers, **loader)
        self.train_loader = FolderLoader(train, config.batch_size, True, subset=config.train_subset, seed=config.seed, **size)
        self.test_loader = FolderLoader(val, 256, False, subset=config.test_subset, **size)
        return len(train.classes)

    def image_size(self) -> int:
        """Side of the network's input images."""
        return self.config.image_size if self.config.dataset == "imagenet" else 32

    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def batches(self, epoch: int, start_step: int) -> Iterator:
        return self.train_loader.iterate(epoch, start_step)

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()
        self.model.drop_path_prob = self.config.drop_path * epoch / self.config.epochs

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        return {**self.step(x, y), "count": torch.tensor(y.numel())}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()
        test = evaluate(self.model, self.test_loader, self.eval_sums)
        return {"test_loss": test["loss"], "test_acc": test["acc"], "lr": lr, "drop_path_prob": self.model.drop_path_prob}

    def tensorboard(self, writer, epoch: int, metrics: dict[str, Any]) -> None:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "drop_path_prob", "images_per_s", "skipped_weight_steps"):
            if key in metrics:
                writer.add_scalar(f"train/{key}", metrics[key], epoch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "genotype": self.genotype.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["genotype"] != self.genotype.to_dict():
            raise RunError("the checkpoint was trained on another genotype; resume it with its own --genotype")
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        load_scaler_state(self.scaler, state.get("scaler"))


class AugmentStep:
    """One step of retraining, as the job and the benchmarks run it.

    SGD on the loss of the network and its auxiliary head (with label smoothing), the fp16 loss
    scaler, and the step's statistics as device tensors. With ``acceleration.cuda_graphs`` the
    step is captured as a CUDA graph and replayed (``darts_sg.speed.cuda_graphs``), one graph per
    drop-path probability (a constant of the captured step): its optimizer is then capturable and
    its learning rate a device tensor.
    """

    def __init__(self, model: Network, config: AugmentConfig, device: torch.device, acceleration: Acceleration,
                 foreach: bool | None = None, optimizer_device: str | None = None):  # fmt: skip
        """`foreach`: torch's foreach switch for the optimizer instead of the device's options; `optimizer_device`:
        the device whose options to take (default `device`; the benchmarks count a CUDA step's ops on the CPU)."""
        self.model, self.config, self.device, self.amp = model, config, device, acceleration.amp
        graphs = acceleration.cuda_graphs and device.type == "cuda"
        options = {"foreach": foreach} if foreach is not None and not graphs else optimizer_kwargs("sgd", optimizer_device or device, graphs)
        self.optimizer = torch.optim.SGD(
            model.parameters(), config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **options
        )  # fmt: skip
        if graphs:
            device_learning_rates(self.optimizer, device)
        self.scaler = grad_scaler(device, self.amp)
        self.graphed = GraphedStep(self.eager_step, log=log) if graphs else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.eager_step(x, y) if self.graphed is None else self.graphed(self.model.drop_path_prob, x, y)

    def loss(self, output, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the network, plus the auxiliary head's times its weight."""
        logits, logits_aux = output
        smoothing = self.config.label_smoothing
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        if logits_aux is not None:
            loss = loss + self.config.auxiliary_weight * F.cross_entropy(logits_aux, y, label_smoothing=smoothing)
        return loss

    def eager_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step on the autograd tape (what a CUDA graph captures); its statistics as device tensors."""
        with autocast(self.device, self.amp):
            loss, output, skipped = weight_step(
                self.model.forward_with_aux, self.optimizer, (x, y), self.config.grad_clip, self.loss, self.scaler
            )
        acc = (output[0].argmax(1) == y).float().mean()
        counts = {"skipped_weight_steps": skipped} if self.scaler.is_enabled() else {}  # fp16 only
        return {"loss": loss, "acc": acc, **counts}


def run_augment(
    config: AugmentConfig, out: str, resume: bool = False, explicit: set[str] | None = None, progress: bool = True,
    log_every: float = 60.0,
) -> dict[str, Any]:
    """Train a genotype into the run directory `out` (or continue it); returns the summary written to summary.json."""
    run = RunDirectory(out)
    with run.session(resume, main=launched_as_main()):  # nothing is written before every check has passed
        return _train(config, run, resume, explicit, progress, log_every)


def _train(config: AugmentConfig, run: RunDirectory, resume: bool, explicit: set[str] | None, progress: bool,
           log_every: float) -> dict[str, Any]:
    if resume:
        config = resume_config(run, AugmentConfig, config, explicit, job="augment")
    if not config.genotype:
        raise UserError("--genotype is required")
    # Resolve the genotype now so the run records the architecture itself, not a name or path.
    allowed = resolve_space(config.space) if config.space else None
    config.genotype = json.dumps(load_genotype(config.genotype, allowed).to_dict())
    device, rank, world, acceleration = prepare_run(config)
    with building("network"):
        job = AugmentJob(config, run, device, rank, world, acceleration)
    restored = restore(job, run) if resume else None
    record_run(run, config, acceleration, resume, "augment")
    params = count_params(job.model)
    params_no_aux = params - (count_params(job.model.aux_head) if job.model.aux_head is not None else 0)
    log(f"augment: {params_no_aux:,} params ({params:,} with the auxiliary head), {job.steps_per_epoch()} steps/epoch "
        f"on {device}; writing {run.path}")  # fmt: skip
    if not resume:
        log_memory(job.model, config, device, world, acceleration.channels_last, job.image_size())
    records = fit_run(job, run, config, resume, "augment.py", progress, log_every, restored)
    flops = flops_per_image(job.model, device, job.image_size())
    summary = {
        "genotype": job.genotype.to_dict(),
        "dataset": config.dataset,
        "params": params_no_aux,
        "params_with_aux": params,
        "flops": flops,
        "multiply_adds": flops // 2,
        "image_size": job.image_size(),
        "latency_ms": cpu_latency_ms(job.model, channels_last=acceleration.channels_last, image_size=job.image_size()),
        "test_acc": records[-1]["test_acc"] if records else float("nan"),
        "test_loss": records[-1]["test_loss"] if records else float("nan"),
        "epochs": config.epochs,
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in records),
    }
    if is_main_process():
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in job.model.state_dict().items()}, buffer)
        atomic_write_bytes(run.file("model.pt"), buffer.getvalue())
        atomic_write_text(run.file("summary.json"), json.dumps(summary, indent=2) + "\n")
        final = {k: summary[k] for k in ("test_acc", "test_loss", "params", "flops", "latency_ms")}
        log_hparams(run.path, config.to_dict(), {**final, "train_acc": records[-1]["train_acc"] if records else float("nan")})
    return summary
