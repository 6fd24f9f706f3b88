"""Mixed precision per device: `--amp bf16|fp16|off`, its support check, autocast and gradient scaling.

bf16 keeps fp32's exponent range, so its gradients need no scaling. fp16 does: its gradients
go through a ``torch.amp.GradScaler`` (one for the weights, one for the alphas), which skips
the optimizer step when a gradient overflowed and lowers the scale. With any other mode the
scaler is a disabled one, whose calls do nothing, so the training steps have one code path.
"""

from __future__ import annotations

import torch

from ..utils.errors import UserError

__all__ = ["AMP_MODES", "NO_SCALING", "autocast", "check_amp", "grad_scaler", "load_scaler_state", "scaler_step"]

AMP_MODES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)  # stateless: every call passes through


def check_amp(mode: str, device: torch.device) -> None:
    """Raise a one-line UserError when `mode` is unknown or `device` cannot run it."""
    if mode not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use --amp fp16 (loss-scaled) or --amp off")


def autocast(device: torch.device, mode: str):
    """Autocast to the `mode`'s dtype on `device`, or a no-op context for `off`."""
    return torch.autocast(device.type, dtype=_DTYPES.get(mode, torch.bfloat16), enabled=mode in _DTYPES)


def grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """A loss scaler for fp16 on `device`; the pass-through `NO_SCALING` otherwise."""
    return torch.amp.GradScaler(device.type) if mode == "fp16" else NO_SCALING


def scaler_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """`scaler.step` and `scaler.update`; returns 1 when the step was skipped (an fp16 overflow), else 0.

    The scaler lowers its scale exactly when it skips a step. Reading the scale (`get_scale`)
    waits for the device, twice per step; the scaler's own step already waits for its overflow
    flag, so the device has little left to run by then. Only fp16 runs pay this: bf16 and fp32
    take the first branch.
    """
    if not scaler.is_enabled():
        optimizer.step()
        return torch.zeros((), dtype=torch.int64)
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return torch.tensor(int(scaler.get_scale() < before))


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Restore a checkpointed scale; a run resumed under another --amp (no saved scale) starts afresh."""
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)
