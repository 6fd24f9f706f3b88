"""Whole training steps as CUDA graphs: captured once per shape, then replayed with one launch.

A DARTS step launches tens of thousands of small kernels, and on a fast GPU the host cannot
issue them as fast as the GPU runs them. The steps have static shapes, so the textbook remedy
applies (``torch.cuda.graphs``): run the step eagerly a few times, capture it once into a CUDA
graph, and from then on copy each batch into the graph's input buffers and replay it.

A step can be captured only if it never waits for the host. What that asks of a job:

- the learning rates live in device tensors that the scheduler writes (`device_learning_rates`,
  and `load_optimizer_state` keeps them there when a checkpoint is loaded);
- the optimizers are capturable: SGD ``fused=True``, Adam ``capturable=True`` (``darts_sg.speed.fused_optim.optimizer_kwargs``);
- no host synchronisation and no branch on device values inside the step: fp16 loss scaling
  (the scaler reads its overflow flag on the host) and the collectives of several processes
  are left eager (`graph_blocker` says why);
- the step's outputs are overwritten by the next replay, so `GraphedStep` hands out copies.

Everything else a step does (autograd, batch norm statistics, drop-path masks from torch's
generator, gradient clipping, both optimizer updates) is recorded and replayed as it ran.
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch

__all__ = ["GraphedStep", "device_learning_rates", "graph_blocker", "load_optimizer_state"]

StepOutputs = dict[str, torch.Tensor]


def device_learning_rates(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Hold each parameter group's learning rate in a 0-d fp32 tensor on `device`.

    A captured step reads the tensor at every replay, and the learning-rate schedulers write
    it in place (``fill_``), so a schedule changes what the graph computes without a new capture.
    """
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


# Settings that say how an optimizer computes, not what it has learnt: a checkpoint written by
# another path (eager, another torch) must not change them.
_HOW_IT_COMPUTES = ("lr", "capturable", "fused", "foreach", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` that keeps the optimizer's own way of computing.

    Checkpoints written with float learning rates (or without capturable Adam) load into an
    optimizer with device learning rates, and the other way round: the learning-rate values are
    taken from `state`, into the very tensors a captured graph reads; Adam's step counts move to
    the parameters' device when the optimizer is capturable.
    """
    kept = [{key: group[key] for key in _HOW_IT_COMPUTES if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, kept):
        loaded_lr = group["lr"]
        group.update(own)
        if isinstance(own.get("lr"), torch.Tensor):
            own["lr"].fill_(float(loaded_lr))  # the value from the checkpoint, in the tensor a graph reads
        else:
            group["lr"] = float(loaded_lr)
        if own.get("capturable") or own.get("fused"):
            for p in group["params"]:
                step = optimizer.state.get(p, {}).get("step")
                if isinstance(step, torch.Tensor) and step.device != p.device:
                    optimizer.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)
        elif "capturable" in own:
            for p in group["params"]:
                step = optimizer.state.get(p, {}).get("step")
                if isinstance(step, torch.Tensor) and step.device.type != "cpu":
                    optimizer.state[p]["step"] = step.to(device="cpu", dtype=torch.float32)


def graph_blocker(device: torch.device, amp: str, world_size: int, compile: bool) -> str | None:
    """Why a training step on `device` cannot be a CUDA graph, or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if amp == "fp16":
        return "fp16 loss scaling reads its overflow flag on the host at every step"
    if world_size > 1:
        return "the gradient all-reduce of several processes is not captured"
    if compile:
        return "--compile already fuses the cells; the two are not combined"
    return None


class GraphedStep:
    """A training step run eagerly for its first calls, then captured and replayed.

    `step(*inputs)` returns a dict of device tensors (the step's statistics). A call names a
    `key`: whatever else the step's computation depends on besides the input shapes (the
    warm-up flag of a search epoch, the drop-path probability of a retraining epoch). Each key
    and set of input shapes is captured once, after `eager_steps` eager calls in all and one
    eager call of its own (which also lets cuDNN choose its algorithms outside the capture);
    a new key releases the graphs of the old ones. Every call, eager or replayed, is one real
    training step. If a capture fails (an operation in the step that a graph cannot hold), the
    step stays eager from then on and `log` gets one line saying why.
    """

    def __init__(self, step: Callable[..., StepOutputs], eager_steps: int = 3, log: Callable[[str], None] | None = None):
        self.step = step
        self.log = log
        self.failed: str | None = None
        self.eager_left = eager_steps
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], StepOutputs]] = {}
        self.seen: set[Hashable] = set()
        self.current_key: Hashable = None
        self.captures = 0
        self.replays = 0
        self._pool = None

    @staticmethod
    def _signature(key: Hashable, inputs: Sequence[torch.Tensor]) -> Hashable:
        return key, tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in inputs)

    def __call__(self, key: Hashable, *inputs: torch.Tensor) -> StepOutputs:
        if key != self.current_key:
            self.graphs.clear()  # graphs of an earlier epoch's setting are not replayed again
            self.current_key = key
        signature = self._signature(key, inputs)
        graph = self.graphs.get(signature)
        if graph is None:
            if self.failed or self.eager_left > 0 or signature not in self.seen:
                self.eager_left -= 1
                self.seen.add(signature)
                return self._eager(inputs)
            try:
                graph = self.graphs[signature] = self._capture(inputs)
            except RuntimeError as exc:  # nothing ran during the capture: the step is still to do, eagerly
                self.failed = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if self.log is not None:
                    self.log(f"CUDA graphs: the step could not be captured ({self.failed}); it runs eagerly from now on")
                return self._eager(inputs)
        cuda_graph, static_inputs, static_outputs = graph
        for static, new in zip(static_inputs, inputs):
            static.copy_(new, non_blocking=True)
        cuda_graph.replay()
        self.replays += 1
        return {name: value.clone() for name, value in static_outputs.items()}

    def _eager(self, inputs: Sequence[torch.Tensor]) -> StepOutputs:
        """One eager step on a side stream, as a capture's warm-up must run (torch.cuda.graphs)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _capture(self, inputs: Sequence[torch.Tensor]):
        static_inputs = [t.clone() for t in inputs]  # same shapes, strides and memory format
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_outputs = self.step(*static_inputs)
        self._pool = graph.pool()
        self.captures += 1
        return graph, static_inputs, static_outputs
