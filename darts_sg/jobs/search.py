"""Architecture search: the job run by the engine (`SearchJob`), its bilevel step (`SearchStep`) and
`run_search`; the settings and presets live in ``darts_sg.train.config``."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterator

import torch

from ..model.genotype import Genotype
from ..model.network import Supernet, count_params
from ..model.ops import resolve_space
from ..speed.accelerate import Acceleration, accelerate, resolve_acceleration
from ..speed.cuda_graphs import GraphedStep, device_learning_rates, load_optimizer_state
from ..speed.fused_optim import optimizer_kwargs
from ..speed.precision import autocast, grad_scaler, load_scaler_state
from ..speed.wide_edges import stacked_once
from ..train.architect import Architect, frozen
from ..train.config import SearchConfig
from ..train.cost import COST_UNITS, CostPenalty, CostTable, fit_budget
from ..train.data import DATASETS, BatchLoader, DataAugmentation, load_cifar
from ..train.engine import evaluate, graphed_batch_sums, restore, weight_step
from ..train.hparams import log_hparams
from ..train.latency import LatencyMeter
from ..train.launch import building, fit_run, launched_as_main, log, log_memory, prepare_run, record_run, resume_config
from ..train.rundir import RunDirectory, RunError
from ..train.skip_guard import SkipGuard, count_normal_skips
from ..utils.distributed import from_main, identical_across_ranks, is_main_process
from ..utils.io import append_jsonl

Batch = tuple[torch.Tensor, torch.Tensor]

__all__ = ["SearchJob", "SearchStep", "run_search", "search_cost_table"]


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
        table = search_cost_table(config, self.primitives, config.nodes, run.file("latency.json")) if config.cost else None
        self.step = SearchStep(self.model, config, device, self.acceleration, cost_table=table)
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
        genotype, budget = self.derive()
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
            **({"budget": budget} if budget else {}),
            "genotype": genotype.to_dict(),
            **({"early_stop": early_stop} if early_stop else {}),
        }

    def derive(self) -> tuple[Genotype, str | None]:
        """The derived genotype and, under --cost-target, how it meets the budget: "search" (the argmax
        genotype already does), "derivation" (`fit_budget` changed choices until it did) or "not met"."""
        genotype = self.model.genotype(self.config.max_skip)
        penalty = self.architect.penalty
        if penalty is None or penalty.target is None:
            return genotype, None
        if penalty.table.total(genotype) <= penalty.target:
            return genotype, "search"
        normal, reduce = self.model.op_weights()
        fitted, changes = fit_budget(genotype, normal, reduce, penalty.table, penalty.target, self.config.max_skip)
        met = penalty.table.total(fitted) <= penalty.target
        log(f"budget: the argmax genotype costs {penalty.table.total(genotype) / COST_UNITS[self.config.cost][0]:.4g} "
            f"{COST_UNITS[self.config.cost][1]}; {changes} choice(s) changed at derivation"
            + ("" if met else f", and the cheapest genotype of the space still costs more than {self.config.cost_target:g}"))  # fmt: skip
        return fitted, "derivation" if met else "not met"

    def costs(self, genotype: Genotype) -> dict[str, float]:
        """Under --cost: the supernet's expected cost and the derived genotype's true one (millions; ms for latency),
        read from the cost table: exact for parameters and FLOPs (``tests/test_cost.py``), for latency the sum of
        the genotype's ops' latencies."""
        penalty = self.architect.penalty
        if penalty is None:
            return {}
        scale = COST_UNITS[self.config.cost][0]
        return {"expected_cost": float(penalty.expected().detach()) / scale, "genotype_cost": penalty.table.total(genotype) / scale}

    def summary(self, genotype: Genotype, budget: str | None) -> dict[str, Any] | None:
        """What genotype.json records beside the final genotype: under --cost, its cost and how the budget was met."""
        if self.architect.penalty is None:
            return None
        c = self.config
        cost = {"kind": c.cost, "unit": COST_UNITS[c.cost][1], "weight": c.cost_weight, "target": c.cost_target,
                **self.costs(genotype), "channels": c.cost_channels, "layers": c.cost_layers}  # fmt: skip
        if c.cost == "latency":  # the table's sum beside the whole network timed once, the same way
            meter = LatencyMeter(device=c.cost_device, threads=c.cost_threads)
            cost.update(device=c.cost_device, threads=c.cost_threads,
                        measured_whole=meter.network(genotype, c.cost_channels, c.cost_layers, c.op_options()))  # fmt: skip
        if budget:
            cost["budget_met_by"] = budget
        return {"cost": cost}

    def tensorboard(self, writer, epoch: int, metrics: dict[str, Any]) -> None:
        from ..plots.visualize import log_search_epoch

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
    graph and replayed (``darts_sg.speed.cuda_graphs``): its optimizers are then capturable and
    their learning rates device tensors.
    """

    def __init__(self, model: Supernet, config: SearchConfig, device: torch.device, acceleration: Acceleration,
                 foreach: bool | None = None, cost_table: CostTable | None = None, optimizer_device: str | None = None):  # fmt: skip
        """`foreach`: torch's foreach switch for both optimizers instead of the device's options
        (``darts_sg.speed.fused_optim``); `cost_table`: the table of --cost, when the caller built it;
        `optimizer_device`: the device whose optimizer options to take (default `device`; the
        benchmarks count a CUDA step's ops on the CPU)."""
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
            table = cost_table or search_cost_table(config, model.primitives, model.steps)
            target = config.cost_target * COST_UNITS[config.cost][0] if config.cost_target is not None else None
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


def search_cost_table(config: SearchConfig, primitives, steps: int, latency_path=None) -> CostTable:
    """The cost table of `--cost`; for latency, timed by the main process (or read from `latency_path`,
    RUN/latency.json, where an earlier session of the run cached it) and handed to every process."""
    if config.cost != "latency":
        return CostTable(config.cost, primitives, steps, config.cost_channels, config.cost_layers, config.op_options())

    def measure() -> CostTable:
        meter = LatencyMeter(latency_path, config.cost_device, config.cost_threads)
        table = CostTable("latency", primitives, steps, config.cost_channels, config.cost_layers, config.op_options(), meter)
        reused = len(meter.table) - meter.measured
        log(f"latency table: {meter.measured} timings measured on {config.cost_device} ({config.cost_threads} thread(s), batch 1)"
            + (f", {reused} reused from {latency_path}" if reused else ""))  # fmt: skip
        return table

    return from_main(measure)


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
        genotype, budget = job.derive()
        if is_main_process():
            genotype.save(run.file("genotype.json"), job.summary(genotype, budget))
            if job.stop_reason:
                run.update_config({**run.load_config(), "early_stop": job.stop_reason})
                log(f"search stopped early: {job.stop_reason}")
            final = run.read_metrics()[-1]
            log_hparams(run.path, config.to_dict(), {k: final[k] for k in ("val_acc", "val_loss", "train_acc", "train_loss")})
    return genotype
