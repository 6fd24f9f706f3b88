"""The supernet's mixed op with a shared ReLU and an in-place weighted sum: an exact substitute.

- shared ReLU: the separable and dilated convs of an edge all begin with ReLU of the same input;
  it is computed once per edge instead of once per op (less memory);
- fused sum: the softmax-weighted sum is accumulated in place, one autograd node per edge
  instead of one product and one sum tensor per op; its backward computes the alpha gradient as
  one dot product per op and saves the op outputs only when the alphas need a gradient.

Same parameters, same state-dict keys and the same results as ``MixedOp`` (up to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.cells import MixedOp
from .layout import is_channels_last

__all__ = ["FusedMixedOp", "WeightedSum"]


def _flat_view(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """`t` as a 1-D tensor in memory order (a view for NCHW and channels-last tensors).

    With `like`, the elements are ordered as in `_flat_view(like)`, copying only if the layouts differ.
    """
    layout = like if like is not None else t
    if t.dim() == 4 and is_channels_last(layout):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


class WeightedSum(torch.autograd.Function):
    """sum_k weights[k] * terms[k], accumulated in place; saves the terms only if `weights` needs a gradient."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, *terms: torch.Tensor) -> torch.Tensor:
        w = weights.unbind(0)
        out = terms[0] * w[0]
        for k in range(1, len(terms)):
            out.addcmul_(terms[k], w[k])
        ctx.save_for_backward(weights, *(terms if ctx.needs_input_grad[0] else ()))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, *terms = ctx.saved_tensors
        grad_weights = None
        if ctx.needs_input_grad[0]:
            flat_grad = _flat_view(grad)
            grad_weights = torch.stack([torch.dot(flat_grad, _flat_view(t, like=grad)) for t in terms]).to(weights.dtype)
        w = weights.unbind(0)
        grad_terms = [grad * w[k] if ctx.needs_input_grad[k + 1] else None for k in range(len(ctx.needs_input_grad) - 1)]
        return (grad_weights, *grad_terms)


def _drop_leading_relu(module: nn.Module) -> bool:
    """Replace the ReLU that `module` begins with (possibly nested) by an identity; True if there was one."""
    if isinstance(module, nn.Sequential) and len(module) > 0:
        if isinstance(module[0], nn.ReLU):
            module[0] = nn.Identity()
            return True
        return _drop_leading_relu(module[0])
    return False


class FusedMixedOp(MixedOp):
    """``MixedOp`` with one ReLU shared by its conv ops and/or the in-place weighted sum.

    Made from a built ``MixedOp`` by ``darts_sg.speed.accelerate`` (a new module holding the plain one's
    parameters and children, then configured by `fuse`), so it holds the very same parameters.
    """

    takes_relu: list[bool]
    fused_sum: bool

    def fuse(self, share_relu: bool, fused_sum: bool) -> "FusedMixedOp":
        """Take the leading ReLU out of the ops that have one (if `share_relu`); set the sum kind."""
        self.takes_relu = [share_relu and _drop_leading_relu(op) for op in self.ops]
        self.fused_sum = fused_sum
        self.register_buffer("_active_index", torch.tensor(self.active, dtype=torch.long), persistent=False)
        return self

    def op_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        relu_x = F.relu(x) if any(self.takes_relu) else None
        return [op(relu_x if relu else x) for op, relu in zip(self.ops, self.takes_relu)]

    def weighted_sum(self, terms: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        if not self.fused_sum:
            return super().weighted_sum(terms, weights)
        return WeightedSum.apply(weights.index_select(0, self._active_index), *terms)
