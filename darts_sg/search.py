"""Architecture search: configuration, presets, and the search job run by the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .architect import Architect, weight_step
from .cells import EdgeOptions
from .config import RunConfig
from .data import Augment, BatchLoader, load_cifar10
from .errors import UserError
from .distributed import identical_across_ranks
from .engine import evaluate, is_main_process
from .genotype import Genotype
from .hparams import log_hparams
from .io import append_jsonl
from .network import Supernet, count_params
from .ops import resolve_space
from .runs import RunDirectory, RunError
from .setup import autocast, fit_run, log, log_memory, place_model, resume_config, start_run

__all__ = ["SearchConfig", "SEARCH_PRESETS", "SearchJob", "run_search"]


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
    skip_none: bool = True
    share_relu: bool = True
    fused_sum: bool = True

    # Settings that define the experiment: a resumed run must not change them.
    IDENTITY = (
        "ops", "order", "epochs", "batch_size", "layers", "init_channels", "nodes", "subset", "seed", "w_lr", "w_lr_min",
        "w_momentum", "w_weight_decay", "grad_clip", "alpha_lr", "alpha_weight_decay", "partial_channels",
        "sg_ratio", "sg_identity", "sg_min_hidden", "ir_expansion", "deterministic", "skip_none",
    )  # fmt: skip

    def edge_options(self) -> EdgeOptions:
        return EdgeOptions(self.skip_none, self.share_relu, self.fused_sum)

    def validate(self) -> None:
        super().validate()
        resolve_space(self.ops)
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


SEARCH_PRESETS: dict[str, dict[str, Any]] = {
    # The DARTS paper's settings.
    "paper": {},
    # A real search on real data that finishes in about 15 minutes on a 2-core CPU. With ~100
    # alpha steps instead of the paper's ~19,500, the alpha learning rate is 10x the paper's so
    # that the architecture weights move measurably.
    "quick": {"epochs": 6, "layers": 5, "init_channels": 8, "subset": 1024, "batch_size": 64, "alpha_lr": 3e-3},
    # Seconds, for tests.
    "smoke": {"epochs": 1, "layers": 3, "init_channels": 4, "nodes": 2, "subset": 64, "batch_size": 32},
}


class SearchJob:
    """The bilevel search: an alpha step on a validation batch, then a weight step on a training batch."""

    kind = "search"

    def __init__(self, config: SearchConfig, run: RunDirectory, device: torch.device, rank: int = 0, world: int = 1):
        self.config = config
        self.run = run
        self.device = device
        self.primitives = resolve_space(config.ops)
        torch.manual_seed(config.seed)
        supernet = Supernet(
            self.primitives, config.init_channels, config.layers, 10, config.nodes,
            config.op_options(), config.partial_channels, edge_options=config.edge_options(),
        )  # fmt: skip
        self.model = place_model(supernet, config, device)
        self.w_optimizer = torch.optim.SGD(
            self.model.weights(), config.w_lr, momentum=config.w_momentum, weight_decay=config.w_weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs, eta_min=config.w_lr_min)
        self.architect = Architect(self.model, config.alpha_lr, config.alpha_weight_decay, order=config.order)
        train = load_cifar10(config.data_root, train=True)
        half = len(train) // 2
        size = config.subset or half
        loader = dict(device=device, channels_last=config.channels_last, rank=rank, world_size=world)
        self.train_loader = BatchLoader(train.slice(0, size), config.batch_size, Augment(), seed=config.seed, stream=0, **loader)
        self.val_loader = BatchLoader(train.slice(half, half + size), config.batch_size, Augment(), seed=config.seed, stream=1, **loader)
        self.eval_loader = BatchLoader(
            train.slice(half, half + size), 256, shuffle=False, drop_last=False, **loader
        )

    def steps_per_epoch(self) -> int:
        return min(len(self.train_loader), len(self.val_loader))

    def batches(self, epoch: int, start_step: int) -> Iterator:
        return zip(self.train_loader.iterate(epoch, start_step), self.val_loader.iterate(epoch, start_step))

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()

    def lr(self) -> float:
        return self.w_optimizer.param_groups[0]["lr"]

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        train_batch, val_batch = batch
        with autocast(self.device, self.config.amp):
            val_loss = self.architect.step(train_batch, val_batch, self.w_optimizer, self.lr())
            loss, logits = weight_step(
                self.model, self.w_optimizer, train_batch, self.config.grad_clip, frozen_params=self.model.alphas()
            )
        acc = (logits.argmax(1) == train_batch[1]).float().mean()
        return {"loss": loss, "acc": acc, "alpha_loss": val_loss, "count": torch.tensor(train_batch[1].numel())}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        lr = self.lr()
        self.scheduler.step()
        val = evaluate(self.model, self.eval_loader)
        genotype = self.model.genotype()
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
            "alpha_lr": self.architect.optimizer.param_groups[0]["lr"],
            "genotype": genotype.to_dict(),
        }

    def tensorboard(self, writer, epoch: int, metrics: dict[str, Any]) -> None:
        from .visualize import log_search_epoch

        log_search_epoch(writer, epoch, metrics, self.model, self.run)

    def state_dict(self) -> dict[str, Any]:
        return {
            "primitives": list(self.primitives),
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.architect.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["primitives"]) != list(self.primitives):
            raise RunError(
                f"the checkpoint searched the ops {','.join(state['primitives'])}, not {','.join(self.primitives)}; "
                "resume it with its own --ops"
            )
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.architect.optimizer.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def run_search(
    config: SearchConfig, out: str, resume: bool = False, explicit: set[str] | None = None, progress: bool = True,
    log_every: float = 60.0,
) -> Genotype:
    """Run a search into the run directory `out` (or continue it); returns the final genotype.

    When resuming, the stored configuration is used; the settings named in `explicit` (options
    the user gave) must agree with it, except run-time settings (device, threads, ...).
    """
    run = RunDirectory(out)
    if resume:
        config = resume_config(run, SearchConfig, config, explicit)
    device, rank, world = start_run(run, config, resume)
    job = SearchJob(config, run, device, rank, world)
    if not resume:
        log(f"search: {len(job.primitives)} ops ({','.join(job.primitives)}), {count_params(job.model):,} weights, "
            f"{job.steps_per_epoch()} steps/epoch on {device}; writing {run.path}")  # fmt: skip
        log_memory(job.model, config, device, world)
    fit_run(job, run, config, resume, "search.py", progress, log_every)
    genotype = job.model.genotype()
    if is_main_process():
        genotype.save(run.file("genotype.json"))
        final = run.read_metrics()[-1]
        log_hparams(run.path, config.to_dict(), {k: final[k] for k in ("val_acc", "val_loss", "train_acc", "train_loss")})
    return genotype
