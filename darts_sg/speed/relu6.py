"""ReLU6 that keeps only its output for the backward pass.

torch's ``hardtanh`` (which ``nn.ReLU6`` calls) computes its gradient from its input, so autograd
keeps that input; in place, it first keeps a copy of it. In the sandglass and inverted-residual
blocks the ReLU6 output is kept anyway (the next convolution needs it), so the input, or its copy,
is a second full-size tensor per ReLU6, and the copy a pass over memory. The gradient only needs
to know where 0 < x < 6, and that is exactly where 0 < relu6(x) < 6; so the same kernel
(``hardtanh_backward``) applied to the output gives the same gradient, bit for bit.
``darts_sg.speed.accelerate`` puts `LeanReLU6` in place of ``nn.ReLU6`` (``--lean-relu6``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeanReLU6"]


class _ReLU6KeepingOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        out = F.hardtanh(x, 0.0, 6.0, inplace=inplace)
        if inplace:
            ctx.mark_dirty(out)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad_out, out, 0.0, 6.0), None


class LeanReLU6(nn.ReLU6):
    """``nn.ReLU6`` (in place or not, same results and gradients) that keeps only its output for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return _ReLU6KeepingOutput.apply(x, self.inplace)
