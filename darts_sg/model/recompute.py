"""Activation recomputation per cell: trade time for memory, exactly.

A recomputed cell keeps only its inputs from the forward pass and runs again during the
backward pass to rebuild the activations its gradient needs. The result is the same as without
recomputation, bit for bit on the CPU:

- the cell's parameters are captured at forward time and passed in explicitly, so a backward
  that runs after ``torch.func.functional_call`` has restored the module (the second-order
  step's virtual weights) still uses the weights of the forward pass;
- batch-norm running statistics and counters are restored after the re-run, so they are updated
  once per forward pass, as without recomputation;
- the random state is replayed (drop path draws the same masks).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

__all__ = ["recomputed_call", "running_stats_kept"]


@contextmanager
def running_stats_kept(module: nn.Module):
    """Restore the batch-norm buffers of `module` when the block exits."""
    buffers = [
        buffer
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buffer is not None
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def recomputed_call(module: nn.Module, *args: torch.Tensor, **kwargs) -> torch.Tensor:
    """``module(*args, **kwargs)`` that saves only its inputs and recomputes the rest in backward."""
    named = list(module.named_parameters())  # under functional_call: the tensors of this pass
    names, params = [name for name, _ in named], [param for _, param in named]
    n_args = len(args)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, inputs[n_args:])), inputs[:n_args], kwargs)

    return checkpoint(
        run,
        *args,
        *params,
        use_reentrant=False,
        context_fn=lambda: (nullcontext(), running_stats_kept(module)),
    )
