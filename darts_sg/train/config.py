"""The settings of every run: those both jobs share (`RunConfig`), then each job's own, with its presets."""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from ..model.genotype import MAX_NODES
from ..model.ops import OpOptions, resolve_space
from ..speed.precision import AMP_MODES
from ..utils.errors import UserError
from .cost import COST_KINDS, COST_UNITS
from .data import DATASETS

__all__ = [
    "RunConfig", "MAX_INIT_CHANNELS", "MAX_SEED", "SearchConfig", "SEARCH_PRESETS", "AugmentConfig", "AUGMENT_PRESETS",
    "DATASET_SETTINGS",
]  # fmt: skip

MAX_SEED = 2**64 - 1  # torch.manual_seed's largest seed
MAX_INIT_CHANNELS = 1024  # the published networks use 16-48; wider ones would not fit in memory with the default sizes

C = TypeVar("C", bound="RunConfig")


@dataclass
class RunConfig:
    """Fields and checks common to SearchConfig and AugmentConfig (each sets its own defaults)."""

    epochs: int = 1
    batch_size: int = 64
    layers: int = 8
    init_channels: int = 16
    seed: int = 0
    grad_clip: float = 5.0
    sg_ratio: float = 6.0
    sg_identity: float = 1.0
    sg_min_hidden: int = 8
    ir_expansion: int = 6
    # Exact speed switches and amp: None = auto, the device's policy (darts_sg.speed.accelerate).
    channels_last: bool | None = None
    fast_dilated: bool | None = None
    fast_batchnorm: bool | None = None
    keep_layout: bool | None = None
    recompute_cells: bool | None = None
    lean_relu6: bool | None = None
    lean_blocks: bool | None = None
    wide_edges: bool | None = None
    uncounted_batchnorm: bool | None = None
    wide_cells: bool | None = None
    amp: str | None = None  # off, bf16 or fp16 (darts_sg.speed.precision)
    compile: bool | None = None  # regional torch.compile of the cells (not bit-exact)
    cuda_graphs: bool | None = None  # the whole step as a CUDA graph (darts_sg.speed.cuda_graphs)
    checkpoint_every: int = 0
    deterministic: bool = False
    threads: int = 0
    device: str = "auto"
    data_root: str | None = None

    # Float settings that must be above 0 (the others must be 0 or more); every float must be finite.
    POSITIVE_FLOATS: typing.ClassVar[tuple[str, ...]] = ("sg_ratio", "sg_identity")

    def validate(self) -> None:
        """Raise UserError naming the option when a setting is out of range (NaN and infinities included)."""
        self.check_floats()
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.init_channels > MAX_INIT_CHANNELS:
            raise UserError(f"--init-channels must be at most {MAX_INIT_CHANNELS}, got {self.init_channels}")
        for name in ("epochs", "batch_size", "layers", "init_channels"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("checkpoint_every", "threads"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(self, name)}")
        if self.amp is not None and self.amp not in AMP_MODES:
            raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.init_channels % 2:
            raise UserError(f"--init-channels must be even, got {self.init_channels}")
        self.op_options()

    def check_floats(self) -> None:
        """Every float setting is a finite number, positive where POSITIVE_FLOATS says, else 0 or more."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if float not in (typing.get_args(hints[f.name]) or (hints[f.name],)) or value is None:
                continue
            option = f"--{f.name.replace('_', '-')}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{option} must be a number, got {_short_repr(value)}")
            if not math.isfinite(value):
                raise UserError(f"{option} must be a finite number, got {value}")
            if f.name in self.POSITIVE_FLOATS and value <= 0:
                raise UserError(f"{option} must be positive, got {value}")
            if value < 0:
                raise UserError(f"{option} must be zero or positive, got {value}")

    def op_options(self) -> OpOptions:
        return OpOptions(self.sg_ratio, self.sg_identity, self.sg_min_hidden, self.ir_expansion)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The config stored as `data` (config.json); unknown keys are ignored, a value of the wrong type is a UserError."""
        if not isinstance(data, dict):
            raise UserError(f"a run configuration is a JSON object, not {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if isinstance(values.get("amp"), bool):  # before fp16 existed, amp was a bf16 on/off switch
            values["amp"] = "bf16" if values["amp"] else "off"
        for name, value in values.items():
            values[name] = _typed(name, value, hints[name])
        return cls(**values)


def _typed(name: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` allows (an int where a float is expected becomes a float), or a UserError."""
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise UserError(f"setting {name} must be {expected}, got {_short_repr(value)}")


def _short_repr(value: Any) -> str:
    """A short JSON-like rendering of `value` for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    # Exact speed switches of the mixed ops: None = auto, the device's policy (darts_sg.speed.accelerate).
    share_relu: bool | None = None
    fused_sum: bool | None = None
    dataset: str = "cifar10"
    warmup_epochs: int = 0  # first epochs train the weights only (PC-DARTS: 15 of 50)
    max_skip: int | None = None  # P-DARTS: at most this many skips in the derived normal cell
    early_stop_skips: int | None = None  # DARTS+: stop when the normal cell has more skips than this ...
    early_stop_epochs: int = 1  # ... for this many epochs in a row
    figures: bool = True  # alpha heatmaps and trajectories drawn after every epoch (figures/, TensorBoard)
    # Search under a budget (darts_sg.train.cost): the expected cost of the derived network in the alpha loss.
    cost: str | None = None  # params, flops or latency; None = accuracy alone
    cost_weight: float = 0.1
    cost_target: float | None = None  # in millions of parameters or MFLOPs, or ms: a penalty on the excess only
    cost_channels: int = 36  # the derived network's scale the cost is counted at
    cost_layers: int = 20
    cost_device: str = "cpu"  # --cost latency: the device the ops are timed on (batch 1) ...
    cost_threads: int = 1  # ... with this many CPU threads (1: the mobile setting)

    # Settings that define the experiment: a resumed run must not change them.
    IDENTITY = (
        "ops", "order", "epochs", "batch_size", "layers", "init_channels", "nodes", "subset", "seed", "w_lr", "w_lr_min",
        "w_momentum", "w_weight_decay", "grad_clip", "alpha_lr", "alpha_weight_decay", "partial_channels",
        "sg_ratio", "sg_identity", "sg_min_hidden", "ir_expansion", "deterministic", "skip_none", "dataset",
        "warmup_epochs", "max_skip", "early_stop_skips", "early_stop_epochs", "cost", "cost_weight", "cost_target",
        "cost_channels", "cost_layers", "cost_device", "cost_threads",
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
            raise UserError(f"--cost-target must be a positive number ({COST_UNITS[self.cost or 'params'][1]}), got {self.cost_target}")
        if (self.cost_target is not None or self.cost_weight != SearchConfig.cost_weight) and self.cost is None:
            raise UserError("--cost-weight and --cost-target need --cost params, flops or latency")
        if self.cost_device not in ("cpu", "cuda"):
            raise UserError(f"--cost-device must be cpu or cuda, got {self.cost_device!r}")
        if self.cost_threads < 1:
            raise UserError(f"--cost-threads must be positive, got {self.cost_threads}")
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


@dataclass
class AugmentConfig(RunConfig):
    """Every setting of an augment (retraining) run (written to config.json)."""

    genotype: str | None = None
    epochs: int = 600
    batch_size: int = 96
    layers: int = 20
    init_channels: int = 36
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    cutout: int = 16
    train_subset: int = 0
    test_subset: int = 0
    space: str | None = None
    dataset: str = "cifar10"
    lr_decay: float = 0.0  # 0: cosine schedule; else the lr is multiplied by it every epoch
    label_smoothing: float = 0.0
    image_size: int = 224  # ImageNet crop size
    workers: int = 0  # ImageNet decoding processes
    # off unless asked for: retraining is not short of memory, and the recomputation costs 3-7% of a step
    # (a searched invres cell at C=16, 8 cells, batch 96: benchmarks/ab_switch.py, benchmarks/results.md run 8)
    lean_blocks: bool | None = False

    IDENTITY = (
        "genotype", "epochs", "batch_size", "layers", "init_channels", "seed", "lr", "momentum", "weight_decay",
        "grad_clip", "auxiliary_weight", "drop_path", "cutout", "train_subset", "test_subset", "sg_ratio",
        "sg_identity", "sg_min_hidden", "ir_expansion", "deterministic", "dataset", "lr_decay", "label_smoothing",
        "image_size", "space",
    )  # fmt: skip

    POSITIVE_FLOATS = (*RunConfig.POSITIVE_FLOATS, "lr")

    def validate(self) -> None:
        super().validate()
        if self.dataset not in (*DATASETS, "imagenet"):
            raise UserError(f"--dataset must be one of {', '.join((*DATASETS, 'imagenet'))}, got {self.dataset!r}")
        if not 0 <= self.lr_decay < 1:
            raise UserError(f"--lr-decay must be in [0, 1) (0 = cosine schedule), got {self.lr_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.dataset == "imagenet" and self.cutout:
            raise UserError("--cutout applies to CIFAR only; ImageNet training uses random-resized crops (drop --cutout)")
        if self.dataset == "imagenet" and self.auxiliary_weight > 0 and self.image_size < 193:
            raise UserError(
                f"the ImageNet auxiliary head needs --image-size 193 or more (7x7 features), got {self.image_size}; "
                "use --auxiliary-weight 0 for smaller images"
            )
        if self.auxiliary_weight > 0 and self.layers < 2:
            raise UserError("the auxiliary head needs --layers 2 or more (it follows the second reduction cell); use --auxiliary-weight 0")
        if self.dataset in DATASETS:
            for name, size in (("train_subset", 50_000), ("test_subset", 10_000)):
                if getattr(self, name) > size:
                    option = f"--{name.replace('_', '-')} {getattr(self, name)}"
                    raise UserError(f"{option} is larger than the {size:,} images of {self.dataset}; lower it or use 0 for all")
        if self.train_subset and self.train_subset < self.batch_size:
            raise UserError(f"--train-subset {self.train_subset} is smaller than one batch ({self.batch_size})")
        if not 0 <= self.drop_path < 1:
            raise UserError(f"--drop-path must be in [0, 1), got {self.drop_path}")


AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    # The DARTS paper's evaluation settings.
    "paper": {},
    # A real training run on a 2-core CPU in about 20 minutes.
    "quick": {"epochs": 4, "layers": 6, "init_channels": 12, "batch_size": 96, "train_subset": 10000},
    # Seconds, for tests.
    "smoke": {"epochs": 1, "layers": 3, "init_channels": 4, "batch_size": 32, "train_subset": 64, "test_subset": 64},
}

# Settings that follow from --dataset, under the preset and the explicit options.
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "cifar10": {},
    "cifar100": {},
    # DARTS' train_imagenet (mobile setting): 14 cells, C=48, 250 epochs, batch 128, SGD lr 0.1
    # decayed by 0.97 per epoch, wd 3e-5, label smoothing 0.1, auxiliary weight 0.4, no drop path.
    "imagenet": {
        "layers": 14, "init_channels": 48, "epochs": 250, "batch_size": 128, "lr": 0.1, "lr_decay": 0.97,
        "weight_decay": 3e-5, "label_smoothing": 0.1, "drop_path": 0.0, "cutout": 0,
    },  # fmt: skip
}
