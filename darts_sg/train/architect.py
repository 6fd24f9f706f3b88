"""The bilevel optimisation of DARTS: the architecture step (the weight step is the plain
training step of ``darts_sg.train.engine``).

First order: the alpha gradient is taken at the current weights on a validation batch.
Second order (unrolled): the alpha gradient is taken at the weights after one virtual SGD step
w' = w - xi * (momentum * buf + grad_w L_train + wd * w), with the implicit term
-xi * d^2 L_train / (d alpha d w) . grad_w' L_val(w') approximated by a central finite
difference. The virtual step never copies the model: w' is evaluated with
``torch.func.functional_call``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..model.network import Supernet
from ..speed.precision import NO_SCALING, scaler_step
from ..utils.distributed import average_gradients
from ..utils.errors import UserError

__all__ = ["Architect", "exact_fp32", "finite_difference_hvp", "frozen", "unrolled_alpha_grads"]

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def frozen(params):
    """Temporarily exclude `params` from autograd (saves their gradient work)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _grad(loss: torch.Tensor, inputs) -> list[torch.Tensor]:
    """Gradients of `loss`, with zeros for inputs it does not depend on."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _loss(model: Supernet, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def unrolled_alpha_grads(
    model: Supernet,
    w_optimizer: torch.optim.SGD,
    train_batch: Batch,
    val_batch: Batch,
    xi: float | torch.Tensor,
    fd_radius: float = 0.01,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Second-order DARTS alpha gradients (finite-difference Hessian-vector product).

    The finite difference shifts w by `fd_radius` (in L2 norm) along dL_val/dw', as in DARTS.
    Returns (alpha gradients, validation loss at w').
    """
    names, weights = zip(*model.named_weights())
    alpha_names, alphas = model.alpha_names(), model.alphas()
    group = w_optimizer.param_groups[0]
    momentum, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)

    # 1. virtual step w' = w - xi * (momentum buffer + dL_train/dw + wd * w)
    with frozen(alphas):
        train_loss = F.cross_entropy(model(train_batch[0]), train_batch[1])
    grads = _grad(train_loss, weights)
    average_gradients(grads)  # the same virtual step on every process
    with torch.no_grad():  # one foreach call per list, not one op per parameter
        direction = torch._foreach_add(grads, weights, alpha=wd) if wd else list(grads)
        buffers = [w_optimizer.state.get(w, {}).get("momentum_buffer") for w in weights]
        if momentum and any(buf is not None for buf in buffers):
            moved = [(d, buf) for d, buf in zip(direction, buffers) if buf is not None]
            torch._foreach_add_([d for d, _ in moved], [buf for _, buf in moved], alpha=momentum)
        unrolled = list(torch._foreach_sub(weights, torch._foreach_mul(direction, xi)))
    for w in unrolled:
        w.requires_grad_(True)

    # 2. dL_val(w', alpha)/d alpha and dL_val(w', alpha)/d w'
    params = dict(zip(names, unrolled))
    params.update(zip(alpha_names, alphas))
    val_loss = _loss(model, params, val_batch)
    grads_val = _grad(val_loss, list(alphas) + unrolled)
    d_alpha, d_w = grads_val[: len(alphas)], grads_val[len(alphas) :]
    average_gradients(d_w)  # the same finite-difference direction on every process

    # 3. finite-difference Hessian-vector product at w +- eps * dL_val/dw'
    hessian = finite_difference_hvp(model, d_w, train_batch, fd_radius)
    alpha_grads = [da - xi * h for da, h in zip(d_alpha, hessian)]
    return alpha_grads, val_loss.detach()


@contextmanager
def exact_fp32(device_type: str):
    """Plain fp32 inside: autocast off and TF32 off for CUDA matmuls and convolutions (restored after)."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def finite_difference_hvp(model: Supernet, direction: list[torch.Tensor], batch: Batch, fd_radius: float = 0.01) -> list[torch.Tensor]:
    """d^2 L_train / (d alpha d w) . v by a central difference at w +- eps * v, eps = fd_radius / ||v||.

    The two passes move each weight by ~1e-5 relative, below bf16/fp16 and TF32 resolution, so
    they always run in plain fp32, whatever autocast or TF32 setting surrounds them.
    """
    names, weights = zip(*model.named_weights())
    alpha_names, alphas = model.alpha_names(), model.alphas()
    with exact_fp32(batch[0].device.type):
        eps = fd_radius / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(direction)))
        grads = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                shifted = dict(zip(names, torch._foreach_add(weights, torch._foreach_mul(direction, sign * eps))))
            shifted.update(zip(alpha_names, alphas))
            grads.append(_grad(_loss(model, shifted, batch), alphas))
        return torch._foreach_div(torch._foreach_sub(grads[0], grads[1]), 2.0 * eps)


class Architect:
    """Owns the alpha optimizer and performs the architecture step of the bilevel problem."""

    def __init__(
        self,
        model: Supernet,
        lr: float = 3e-4,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        order: int = 1,
        scaler: torch.amp.GradScaler | None = None,
        **optimizer_options,
    ):
        """`optimizer_options` go to the alpha optimizer, Adam (``foreach``, ``capturable``, ...)."""
        if order not in (1, 2):
            raise UserError(f"order must be 1 or 2, got {order}")
        if order == 2 and scaler is not None and scaler.is_enabled():
            raise UserError("second-order search does not support fp16 loss scaling; use --amp bf16 or --amp off")
        self.model = model
        self.order = order
        self.optimizer = torch.optim.Adam(model.alphas(), lr=lr, betas=betas, weight_decay=weight_decay, **optimizer_options)
        self.scaler = scaler or NO_SCALING  # an enabled one for fp16
        self.penalty: Callable[[], torch.Tensor] | None = None  # a term of the alphas alone added to the loss (darts_sg.train.cost)

    def alpha_grads(self, train_batch: Batch, val_batch: Batch, w_optimizer, xi: float | torch.Tensor):
        """Alpha gradients and validation loss, first or second order."""
        if self.order == 2:
            return unrolled_alpha_grads(self.model, w_optimizer, train_batch, val_batch, xi)
        x, y = val_batch
        loss = F.cross_entropy(self.model(x), y)
        # Only the alphas are asked for, so autograd skips the conv weight gradients.
        return _grad(self.scaler.scale(loss), self.model.alphas()), loss.detach()

    def step(
        self, train_batch: Batch, val_batch: Batch, w_optimizer: torch.optim.SGD, xi: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step on the alphas (`xi`: the virtual step's learning rate, a float or a device tensor); returns the validation loss and 1 if the step was skipped (fp16 overflow) else 0."""
        grads, loss = self.alpha_grads(train_batch, val_batch, w_optimizer, xi)
        if self.penalty is not None:  # a function of the alphas alone: its gradient adds to either order's
            grads = [g + p for g, p in zip(grads, _grad(self.scaler.scale(self.penalty()), self.model.alphas()))]
        average_gradients(grads)  # identical alphas on every process (an overflow anywhere skips everywhere)
        for alpha, grad in zip(self.model.alphas(), grads):
            alpha.grad = grad
        skipped = scaler_step(self.scaler, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, skipped

