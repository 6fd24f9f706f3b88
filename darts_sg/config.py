"""Settings shared by every run kind (search, augment): sizes, block options, run-time switches."""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from .errors import UserError
from .ops import OpOptions
from .precision import AMP_MODES

__all__ = ["RunConfig", "MAX_INIT_CHANNELS", "MAX_SEED"]

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
    # Exact speed switches and amp: None = auto, the device's policy (darts_sg.accelerate).
    channels_last: bool | None = None
    fast_dilated: bool | None = None
    fast_batchnorm: bool | None = None
    keep_layout: bool | None = None
    recompute_cells: bool | None = None
    lean_relu6: bool | None = None
    lean_blocks: bool | None = None
    wide_edges: bool | None = None
    uncounted_batchnorm: bool | None = None
    amp: str | None = None  # off, bf16 or fp16 (darts_sg.precision)
    compile: bool | None = None  # regional torch.compile of the cells (not bit-exact)
    cuda_graphs: bool | None = None  # the whole step as a CUDA graph (darts_sg.cuda_graphs)
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
