"""The optimizers' constructor options on each device, in one place: fused, capturable or torch's default.

torch's SGD and Adam take ``fused=True`` on the devices that have fused kernels for them
(``torch.optim.optimizer._get_fused_kernels_supported_devices``): one kernel per step instead of
several per weight tensor, and Adam's step counts stay on the device (the for-loop and foreach
Adam read them on the host, a synchronisation per step). The result is the for-loop optimizer's
up to float rounding (``tests/test_fused_optim.py``). On a GPU the supernet's step is bound by the
host issuing kernels, so that is worth having; on the CPU no benchmark has shown a gain
(``bench_steps.py``: foreach optimizers, no measurable gain), so the CPU keeps torch's default.

A step captured as a CUDA graph (``darts_sg.speed.cuda_graphs``) needs optimizers that never wait for
the host: fused SGD, and Adam with ``capturable=True`` (its foreach form, the one tested under capture).
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

__all__ = ["optimizer_kwargs"]

KINDS = ("sgd", "adam")


def optimizer_kwargs(kind: str, device: torch.device | str, graphs: bool = False) -> dict[str, bool]:
    """Extra keyword arguments for ``torch.optim.SGD`` (`kind` "sgd") or ``Adam`` ("adam") on `device`.

    ``{"fused": True}`` on a non-CPU device with fused kernels, else none (torch's default); for a
    step captured as a CUDA graph (`graphs`), Adam gets ``{"capturable": True, "foreach": True}``.
    """
    if kind not in KINDS:
        raise ValueError(f"optimizer kind must be one of {', '.join(KINDS)}, got {kind!r}")
    device_type = torch.device(device).type
    if device_type == "cpu":
        return {}
    if graphs and kind == "adam":
        return {"capturable": True, "foreach": True}
    return {"fused": True} if device_type in _get_fused_kernels_supported_devices() else {}
