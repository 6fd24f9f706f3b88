"""Settings shared by every run kind (search, augment): sizes, block options, run-time switches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from .errors import UserError
from .ops import OpOptions
from .precision import AMP_MODES

__all__ = ["RunConfig"]

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
    amp: str | None = None  # off, bf16 or fp16 (darts_sg.precision)
    compile: bool | None = None  # regional torch.compile of the cells (not bit-exact)
    checkpoint_every: int = 0
    deterministic: bool = False
    threads: int = 0
    device: str = "auto"
    data_root: str | None = None

    def validate(self) -> None:
        """Raise UserError naming the option when a setting is out of range."""
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

    def op_options(self) -> OpOptions:
        return OpOptions(self.sg_ratio, self.sg_identity, self.sg_min_hidden, self.ir_expansion)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("amp"), bool):  # before fp16 existed, amp was a bf16 on/off switch
            values["amp"] = "bf16" if values["amp"] else "off"
        return cls(**values)
