"""Architecture search: configuration, presets, and the search job run by the engine."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .accelerate import Acceleration, accelerate, resolve_acceleration
from .architect import Architect, frozen
from .config import RunConfig
from .cost import COST_KINDS, CostPenalty, CostTable, genotype_cost
from .cuda_graphs import GraphedStep, device_learning_rates, load_optimizer_state
from .data import DATASETS, BatchLoader, DataAugmentation, load_cifar
from .distributed import identical_across_ranks, is_main_process
from .engine import evaluate, graphed_batch_sums, restore, weight_step
from .errors import UserError
from .fused_optim import optimizer_kwargs
from .genotype import MAX_NODES, Genotype
from .hparams import log_hparams
from .skip_guard import SkipGuard, count_normal_skips
from .wide_edges import stacked_once
from .io import append_jsonl
from .network import Supernet, count_params
from .ops import resolve_space
from .precision import autocast, grad_scaler, load_scaler_state
from .run_setup import building, fit_run, launched_as_main, log, log_memory, prepare_run, record_run, resume_config
from .runs import RunDirectory, RunError

Batch = tuple[torch.Tensor, torch.Tensor]

__all__ = ["SearchConfig", "SEARCH_PRESETS", "SearchJob", "SearchStep", "run_search"]


@dataclass
class SearchConfig(RunConfig):
    """Every setting of a search run (written to config.json)."""

    ops: str = "sgblock"
    order: int = 1
    epochs: int = 50
    batch_size: int = 64
    layers: int = 8
    init_channels: int = 16
    nodes: int = 4
    subset: int = 0  # images from each half of the training set; 0 = all 25k
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    alpha_lr: float = 3e-4
    alpha_weight_decay: float = 1e-3
    partial_channels: int = 1
    # A construction option, not a device substitute: it changes the checkpoint layout (IDENTITY).
    skip_none: bool = True
    # Exact speed switches of the mixed ops: None = auto, the device's policy (darts_sg.accelerate).
    share_relu: bool | None = None
    fused_sum: bool | None = None
    dataset: str = "cifar10"
    warmup_epochs: int = 0  # first epochs train the weights only (PC-DARTS: 15 of 50)
    max_skip: int | None = None  # P-DARTS: at most this many skips in the derived normal cell
    early_stop_skips: int | None = None  # DARTS+: stop when the normal cell has more skips than this ...
    early_stop_epochs: int = 1  # ... for this many epochs in a row
    figures: bool = True  # alpha heatmaps and trajectories drawn after every epoch (figures/, TensorBoard)
    # Search under a budget (darts_sg.cost): the expected cost of the derived network in the alpha loss.
    cost: str | None = None  # params or flops; None = accuracy alone
    cost_weight: float = 0.1
    cost_target: float | None = None  # in millions of parameters or MFLOPs: a penalty on the excess only
    cost_channels: int = 36  # the derived network's scale the cost is counted at
    cost_layers: int = 20

    # Settings that define the experiment: a resumed run must not change them.
    IDENTITY = (
        "ops", "order", "epochs", "batch_size", "layers", "init_channels", "nodes", "subset", "seed", "w_lr", "w_lr_min",
        "w_momentum", "w_weight_decay", "grad_clip", "alpha_lr", "alpha_weight_decay", "partial_channels",
        "sg_ratio", "sg_identity", "sg_min_hidden", "ir_expansion", "deterministic", "skip_none", "dataset",
        "warmup_epochs", "max_skip", "early_stop_skips", "early_stop_epochs", "cost", "cost_weight", "cost_target",
        "cost_channels", "cost_layers",
    )  # fmt: skip

    POSITIVE_FLOATS = (*RunConfig.POSITIVE_FLOATS, "w_lr", "alpha_lr")

    def validate(self) -> None:
        super().validate()
        resolve_space(self.ops)
        if self.nodes > MAX_NODES:
            raise UserError(f"--nodes must be at most {MAX_NODES} (DARTS uses 4), got {self.nodes}")
        if self.order not in (1, 2):
            raise UserError(f"--order must be 1 or 2, got {self.order}")
        for name in ("nodes", "partial_channels", "subset"):
            if getattr(self, name) < (0 if name == "subset" else 1):
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.subset and self.subset < self.batch_size:
            raise UserError(f"--subset {self.subset} is smaller than one batch ({self.batch_size}); raise it or lower --batch-size")
        if self.subset and self.subset > 25_000:
            raise UserError(f"--subset {self.subset} is larger than a half of the training set (25000); lower it or use 0 for all")
        if self.init_channels % self.partial_channels:
            raise UserError(f"--init-channels {self.init_channels} must be divisible by --partial-channels {self.partial_channels}")
        if self.dataset not in DATASETS:
            raise UserError(f"--dataset must be one of {', '.join(DATASETS)} for a search, got {self.dataset!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UserError(
                f"--warmup-epochs {self.warmup_epochs} must be at least 0 and leave epochs for the alphas (--epochs {self.epochs})"
            )
        for name in ("max_skip", "early_stop_skips"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(self, name)}")
        if self.order == 2 and self.amp == "fp16":
            raise UserError("--order 2 does not support --amp fp16 (its finite differences need unscaled fp32 gradients); use --amp bf16 or --amp off")
        if self.cost is not None and self.cost not in COST_KINDS:
            raise UserError(f"--cost must be one of {', '.join(COST_KINDS)}, got {self.cost!r}")
        if not math.isfinite(self.cost_weight) or self.cost_weight < 0:
            raise UserError(f"--cost-weight must be a finite number >= 0, got {self.cost_weight}")
        if self.cost_target is not None and not (math.isfinite(self.cost_target) and self.cost_target > 0):
            raise UserError(f"--cost-target must be a positive number (millions of {self.cost or 'params'}), got {self.cost_target}")
        if (self.cost_target is not None or self.cost_weight != SearchConfig.cost_weight) and self.cost is None:
            raise UserError("--cost-weight and --cost-target need --cost params or --cost flops")
        for name in ("cost_channels", "cost_layers"):
            if getattr(self, name) < (2 if name == "cost_channels" else 3) or (name == "cost_channels" and self.cost_channels % 2):
                raise UserError(f"--{name.replace('_', '-')} must be an even number >= 2 (channels) or >= 3 (layers), got {getattr(self, name)}")
        if self.early_stop_epochs < 1:
            raise UserError(f"--early-stop-epochs must be positive, got {self.early_stop_epochs}")


SEARCH_PRESETS: dict[str, dict[str, Any]] = {
    # The DARTS paper's settings.
    "paper": {},
    # A real search on real data that finishes in about 15 minutes on a 2-core CPU. With ~100
    # alpha steps instead of the paper's ~19,500, the alpha learning rate is 10x the paper's so
    # that the architecture weights move measurably.
    "quick": {"epochs": 6, "layers": 5, "init_channels": 8, "subset": 1024, "batch_size": 64, "alpha_lr": 3e-3},
    # Seconds, for tests; no per-epoch alpha figures (they would take most of the time).
    "smoke": {"epochs": 1, "layers": 3, "init_channels": 4, "nodes": 2, "subset": 64, "batch_size": 32, "figures": False},
    # PC-DARTS (Xu et al., ICLR 2020) as published: partial channels K=4 with edge normalisation,
    # batch 256, weight lr 0.1 cosine to 0, alpha lr 6e-4, the first 15 of 50 epochs weights only.
    "pc-darts": {"partial_channels": 4, "batch_size": 256, "w_lr": 0.1, "w_lr_min": 0.0, "alpha_lr": 6e-4, "warmup_epochs": 15},
}


class SearchJob:
    """The bilevel search: an alpha step on a validation batch, then a weight step on a training batch."""

    kind = "search"

    def __init__(
        self,
        config: SearchConfig,
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
        self.primitives = resolve_space(config.ops)
        torch.manual_seed(config.seed)
        supernet = Supernet(
            self.primitives, config.init_channels, config.layers, DATASETS[config.dataset].num_classes, config.nodes,
            config.op_options(), config.partial_channels, skip_none=config.skip_none,
        )  # fmt: skip
        self.model = accelerate(supernet, device, self.acceleration)
        self.step = SearchStep(self.model, config, device, self.acceleration)
        self.w_optimizer, self.architect, self.w_scaler = self.step.w_optimizer, self.step.architect, self.step.w_scaler
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs, eta_min=config.w_lr_min)
        self.eval_sums = graphed_batch_sums(self.model, log) if self.acceleration.cuda_graphs else None
        self.skip_guard = SkipGuard(config.early_stop_skips, config.early_stop_epochs)
        self.warmup = False
        train = load_cifar(config.dataset, config.data_root, train=True)
        half = len(train) // 2
        size = config.subset or half
        loader = dict(device=device, channels_last=self.acceleration.channels_last, rank=rank, world_size=world)
        augmentation = DataAugmentation()
        self.train_loader = BatchLoader(train.slice(0, size), config.batch_size, augmentation, seed=config.seed, stream=0, **loader)
        self.val_loader = BatchLoader(train.slice(half, half + size), config.batch_size, augmentation, seed=config.seed, stream=1, **loader)
        self.eval_loader = BatchLoader(
            train.slice(half, half + size), 256, shuffle=False, drop_last=False, **loader
        )

    def steps_per_epoch(self) -> int:
        return min(len(self.train_loader), len(self.val_loader))

    def batches(self, epoch: int, start_step: int) -> Iterator:
        return zip(self.train_loader.iterate(epoch, start_step), self.val_loader.iterate(epoch, start_step))

    @property
    def stop_reason(self) -> str | None:
        """Why the search stopped early (DARTS+), or None while it goes on."""
        return self.skip_guard.stop_reason

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()
        self.warmup = epoch < self.config.warmup_epochs

    def lr(self) -> float:
        return float(self.w_optimizer.param_groups[0]["lr"])

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        train_batch, val_batch = batch
        return {**self.step(train_batch, val_batch, self.warmup), "count": torch.tensor(train_batch[1].numel())}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        lr = self.lr()
        self.scheduler.step()
        val = evaluate(self.model, self.eval_loader, self.eval_sums)
        genotype = self.model.genotype(self.config.max_skip)
        normal_skips = count_normal_skips(self.model.genotype())
        early_stop = None if self.warmup else self.skip_guard.update(epoch, normal_skips)  # alphas move after warm-up
        normal, reduce = self.model.op_weights()
        if is_main_process():
            genotype.save(self.run.file("genotypes", f"epoch_{epoch + 1:03d}.json"))
            genotype.save(self.run.file("genotype.json"))
            append_jsonl(
                self.run.file("alphas.jsonl"),
                {"epoch": epoch + 1, "primitives": list(self.primitives), "normal": normal.tolist(), "reduce": reduce.tolist()},
            )
        if not identical_across_ranks(self.model.alphas()):
            raise RuntimeError(f"the alphas differ between processes after epoch {epoch + 1}")
        return {
            "alphas_identical_across_ranks": True,
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": lr,
            "alpha_lr": float(self.architect.optimizer.param_groups[0]["lr"]),
            "warmup": self.warmup,
            "normal_skips": normal_skips,
            **self.costs(genotype),
            "genotype": genotype.to_dict(),
            **({"early_stop": early_stop} if early_stop else {}),
        }

    def costs(self, genotype: Genotype) -> dict[str, float]:
        """Under --cost: the supernet's expected cost and the derived genotype's true one (millions)."""
        penalty = self.architect.penalty
        if penalty is None:
            return {}
        c = self.config
        true_cost = genotype_cost(genotype, c.cost, c.cost_channels, c.cost_layers, c.op_options())
        return {"expected_cost": float(penalty.expected()) / 1e6, "genotype_cost": true_cost / 1e6}

    def tensorboard(self, writer, epoch: int, metrics: dict[str, Any]) -> None:
        from .visualize import log_search_epoch

        log_search_epoch(writer, epoch, metrics, self.model, self.run, figures=self.config.figures)
        writer.add_scalar("search/normal_skips", metrics["normal_skips"], epoch)
        writer.add_scalar("search/warmup", int(metrics["warmup"]), epoch)
        for key in ("expected_cost", "genotype_cost"):
            if key in metrics:
                writer.add_scalar(f"search/{key}", metrics[key], epoch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "primitives": list(self.primitives),
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.architect.optimizer.state_dict(),
            "w_scaler": self.w_scaler.state_dict(),
            "a_scaler": self.architect.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "skip_guard": self.skip_guard.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["primitives"]) != list(self.primitives):
            raise RunError(
                f"the checkpoint searched the ops {','.join(state['primitives'])}, not {','.join(self.primitives)}; "
                "resume it with its own --ops"
            )
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.w_optimizer, state["w_optimizer"])
        load_optimizer_state(self.architect.optimizer, state["a_optimizer"])
        load_scaler_state(self.w_scaler, state.get("w_scaler"))
        load_scaler_state(self.architect.scaler, state.get("a_scaler"))
        self.scheduler.load_state_dict(state["scheduler"])
        self.skip_guard.load_state_dict(state.get("skip_guard", {}))


class SearchStep:
    """One step of the bilevel search, as the job, the benchmarks and the tests run it.

    An alpha step on a validation batch (skipped in warm-up epochs), then a weight step on a
    training batch, with both optimizers, the loss scalers of fp16 and the statistics of the
    step (device tensors). With ``acceleration.cuda_graphs`` the step is captured as a CUDA
    graph and replayed (``darts_sg.cuda_graphs``): its optimizers are then capturable and
    their learning rates device tensors.
    """

    def __init__(self, model: Supernet, config: SearchConfig, device: torch.device, acceleration: Acceleration,
                 foreach: bool | None = None, optimizer_device: str | None = None):  # fmt: skip
        """`foreach`: torch's foreach switch for both optimizers instead of the device's options
        (``darts_sg.fused_optim``); `optimizer_device`: the device whose options to take (default
        `device`; the benchmarks count a CUDA step's ops on the CPU)."""
        self.model, self.device, self.amp = model, device, acceleration.amp
        self.grad_clip = config.grad_clip
        graphs = acceleration.cuda_graphs and device.type == "cuda"  # a CPU step counted under the CUDA policy runs eagerly

        def options(kind: str) -> dict[str, bool]:
            if foreach is not None and not graphs:
                return {"foreach": foreach}
            return optimizer_kwargs(kind, optimizer_device or device, graphs)

        self.w_optimizer = torch.optim.SGD(
            model.weights(), config.w_lr, momentum=config.w_momentum, weight_decay=config.w_weight_decay, **options("sgd")
        )  # fmt: skip
        self.w_scaler = grad_scaler(device, self.amp)
        self.architect = Architect(
            model, config.alpha_lr, config.alpha_weight_decay, order=config.order, scaler=grad_scaler(device, self.amp),
            **options("adam"),
        )  # fmt: skip
        if config.cost:
            table = CostTable(config.cost, model.primitives, model.steps, config.cost_channels, config.cost_layers, config.op_options())
            target = config.cost_target * 1e6 if config.cost_target is not None else None
            self.architect.penalty = CostPenalty(table, model, config.cost_weight, target)
        if graphs:
            device_learning_rates(self.w_optimizer, device)
            device_learning_rates(self.architect.optimizer, device)
        self.graphed = GraphedStep(self.eager_step, log=log) if graphs else None
        self.same_weights = nullcontext if acceleration.compile else stacked_once  # compiled cells trace their own stacks
        self.warmup = False

    def __call__(self, train_batch: Batch, val_batch: Batch, warmup: bool = False) -> dict[str, torch.Tensor]:
        """One step; in a warm-up epoch (`warmup`) the weights alone are trained."""
        self.warmup = warmup
        if self.graphed is not None:
            return self.graphed(warmup, *train_batch, *val_batch)
        return self.eager_step(*train_batch, *val_batch)

    def eager_step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor):
        """The step itself, on the autograd tape (what a CUDA graph captures)."""
        train_batch, val_batch = (x_train, y_train), (x_val, y_val)
        lr = self.w_optimizer.param_groups[0]["lr"]  # the virtual step of second order takes the weights' learning rate
        stats, skipped = {}, {}
        with autocast(self.device, self.amp), self.same_weights(self.model):  # both passes see the weights before the update
            if not self.warmup:  # warm-up epochs train the weights alone
                stats["alpha_loss"], skipped["skipped_alpha_steps"] = self.architect.step(train_batch, val_batch, self.w_optimizer, lr)
            with frozen(self.model.alphas()):
                loss, logits, skipped["skipped_weight_steps"] = weight_step(
                    self.model, self.w_optimizer, train_batch, self.grad_clip, scaler=self.w_scaler
                )
        acc = (logits.argmax(1) == y_train).float().mean()
        counts = skipped if self.w_scaler.is_enabled() else {}  # fp16 only: other modes never skip
        return {"loss": loss, "acc": acc, **stats, **counts}


def run_search(
    config: SearchConfig, out: str, resume: bool = False, explicit: set[str] | None = None, progress: bool = True,
    log_every: float = 60.0,
) -> Genotype:
    """Run a search into the run directory `out` (or continue it); returns the final genotype.

    When resuming, the stored configuration is used; the settings named in `explicit` (options
    the user gave) must agree with it, except run-time settings (device, threads, ...).
    """
    run = RunDirectory(out)
    with run.session(resume, main=launched_as_main()):  # nothing is written before every check has passed
        if resume:
            config = resume_config(run, SearchConfig, config, explicit, job="search")
        device, rank, world, acceleration = prepare_run(config)
        with building("supernet"):
            job = SearchJob(config, run, device, rank, world, acceleration)
        restored = restore(job, run) if resume else None
        record_run(run, config, acceleration, resume, "search")
        if not resume:
            log(f"search: {len(job.primitives)} ops ({','.join(job.primitives)}), {count_params(job.model):,} weights, "
                f"{job.steps_per_epoch()} steps/epoch on {device}; writing {run.path}")  # fmt: skip
            log_memory(job.model, config, device, world, acceleration.channels_last)
        fit_run(job, run, config, resume, "search.py", progress, log_every, restored)
        genotype = job.model.genotype(config.max_skip)
        if is_main_process():
            genotype.save(run.file("genotype.json"))
            if job.stop_reason:
                run.update_config({**run.load_config(), "early_stop": job.stop_reason})
                log(f"search stopped early: {job.stop_reason}")
            final = run.read_metrics()[-1]
            log_hparams(run.path, config.to_dict(), {k: final[k] for k in ("val_acc", "val_loss", "train_acc", "train_loss")})
    return genotype
