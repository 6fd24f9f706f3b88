"""Fused optimizers where they pay: one kernel per optimizer step instead of several per parameter.

torch's SGD and Adam take ``fused=True`` on the devices that have fused kernels for them
(``torch.optim.optimizer._get_fused_kernels_supported_devices``). The result is the for-loop
optimizer's up to float rounding (``tests/test_fused_optim.py``). On a GPU the supernet's step is
bound by the host issuing kernels, so one fused step over ~1,400 weight tensors is worth having;
on the CPU no benchmark has shown a gain (``bench_steps.py``: foreach optimizers, no measurable
gain), so the CPU keeps torch's default.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

__all__ = ["optimizer_kwargs"]


def optimizer_kwargs(device: torch.device | str) -> dict[str, bool]:
    """Extra keyword arguments for ``torch.optim.SGD`` / ``Adam`` on `device`: ``{"fused": True}`` on a
    non-CPU device with fused kernels, else none (torch's default)."""
    kind = torch.device(device).type
    if kind != "cpu" and kind in _get_fused_kernels_supported_devices():
        return {"fused": True}
    return {}
