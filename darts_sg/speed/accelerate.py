"""The one acceleration layer: what pays on each device, decided once and applied from outside.

The model code (``ops``, ``cells``, ``network``) builds the papers' plain modules. A job builds its
model, then calls `accelerate` once: like ``nn.SyncBatchNorm.convert_sync_batchnorm``, it walks
the module tree and replaces modules by exact equivalents that are faster on the device (same
parameters, buffers and state-dict keys; the same results up to float rounding), sets the
memory layout, the recomputation switch and the backend flags, and moves the model to the
device. `resolve_acceleration` decides what to apply: the device's policy (`device_policy`),
overridden by every flag the run sets explicitly; the jobs record the result in config.json.

The substitutes, each with its flag and its exactness test:

========================  ==============================================  ==========================
flag                      plain module -> substitute                      where it pays
========================  ==============================================  ==========================
``channels_last``         NCHW -> NHWC memory format                      oneDNN on the CPU
``fast_dilated``          dilated depthwise ``nn.Conv2d`` ->              CPU (slow dilated backward)
                          `PolyphaseDilatedConv2d`
``fast_batchnorm``        ``nn.BatchNorm2d`` -> `WideBatchNorm2d`         CPU, channels-last, C % 16
``keep_layout``           ``FactorizedReduce``, global pooling ->         CPU, channels-last
                          layout-keeping gradients (``layout``)
``uncounted_batchnorm``   ``nn.BatchNorm2d`` with a momentum ->           CUDA (one op less per batch
                          `UncountedBatchNorm2d` (no batch counter)       norm: launch-bound steps)
``share_relu``            ``MixedOp`` -> `FusedMixedOp` (one ReLU/edge)   any device (less memory)
``fused_sum``             ``MixedOp`` -> `FusedMixedOp` (in-place sum)    any device (less memory)
``lean_relu6``            ``nn.ReLU6`` -> `LeanReLU6` (keeps its output)  any device (less memory)
``lean_blocks``           the bodies of ``SandGlass`` and                 CPU (less memory); CUDA
                          ``InvertedResidual`` -> `LeanSequential`        untested, off there
                          (BN-ReLU6-conv keeps only the BN's input)
``wide_edges``            supernet ``Cell`` -> `WideCell`: the edges that CUDA (launch-bound); CPU:
                          read one node run as one wide op                see the README
                          (``wide_edges``)
``wide_cells``            derived ``Cell`` -> `WideDerivedCell`: its      CUDA (launch-bound); CPU:
                          convolution edges of one shape run as one       not timed, off
                          wide op, drop path applied per wide op; the
                          ReLUs of a cell output -> one
                          `SharedInputReLU` (``wide_cells``)
``recompute_cells``       store activations -> recompute per cell         any device, when short of memory
``amp``                   fp32 -> bf16 or fp16 autocast (``precision``)   bf16: devices with bf16 units
``cudnn_benchmark``       ``torch.backends.cudnn.benchmark``              CUDA, unless deterministic
``compile``               each cell -> ``torch.compile``'d in place       off until a benchmark shows
                          (regional: cells of one shape share the code)   it pays (not bit-exact)
``cuda_graphs``           the whole training step captured as a CUDA      CUDA (one launch per step;
                          graph and replayed (``cuda_graphs``)            not with fp16, torchrun
                                                                          or compile)
========================  ==============================================  ==========================

``compile`` is the one switch that is not exact: the compiler fuses kernels, which reorders float
rounding, and draws drop-path masks from its own random stream. It is tested against eager
within a tolerance, and off unless asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..model.cells import Cell, MixedOp
from ..model.network import AuxiliaryHead, CellNetwork
from ..model.ops import FactorizedReduce, InvertedResidual, SandGlass
from ..utils.distributed import world
from .batchnorm import UncountedBatchNorm2d, WideBatchNorm2d
from .cuda_graphs import graph_blocker
from .fused_mixed_op import FusedMixedOp
from .layout import LayoutKeepingFactorizedReduce, LayoutKeepingGlobalPool
from .norm_act_conv import LeanSequential
from .polyphase import PolyphaseDilatedConv2d, is_dilated_depthwise
from .precision import check_amp
from .relu6 import LeanReLU6
from .wide_cells import WideDerivedCell, share_input_relus
from .wide_edges import WideCell

__all__ = ["Acceleration", "FLAGS", "accelerate", "device_policy", "resolve_acceleration"]

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Acceleration:
    """What `accelerate` applies: one switch per exact substitute or backend flag (see the module docstring)."""

    channels_last: bool
    fast_dilated: bool
    fast_batchnorm: bool
    keep_layout: bool
    share_relu: bool
    fused_sum: bool
    recompute_cells: bool
    lean_relu6: bool
    amp: str  # off, bf16 or fp16 (darts_sg.speed.precision)
    cudnn_benchmark: bool
    compile: bool = False
    lean_blocks: bool = False
    cuda_graphs: bool = False
    wide_edges: bool = False
    uncounted_batchnorm: bool = False
    wide_cells: bool = False

    def to_dict(self) -> dict[str, bool | str]:
        return asdict(self)


# The switches a run may set (config fields and command-line flags; None = the device's policy).
# cudnn_benchmark has no flag of its own: --deterministic turns it off.
FLAGS: tuple[str, ...] = tuple(f.name for f in fields(Acceleration) if f.name != "cudnn_benchmark")


def device_policy(device_type: str, deterministic: bool = False) -> Acceleration:
    """The defaults on a device: the CPU substitutes on the CPU only, cudnn.benchmark on CUDA."""
    cpu = device_type == "cpu"
    return Acceleration(
        channels_last=cpu,  # oneDNN's fast layout; on CUDA the default NCHW (NHWC has not been timed on a GPU)
        fast_dilated=cpu,
        fast_batchnorm=cpu,
        keep_layout=cpu,
        share_relu=True,
        fused_sum=True,
        recompute_cells=False,
        lean_relu6=True,
        amp="off",  # on a CPU without bf16 instructions it was more than 10x slower
        cudnn_benchmark=device_type == "cuda" and not deterministic,
        compile=False,  # no benchmark has shown that it pays yet (benchmarks/bench_steps.py --device cuda)
        lean_blocks=cpu,  # on CUDA cuDNN's batch norm is one kernel; the recomputation has not been timed on a GPU
        cuda_graphs=device_type == "cuda",  # benchmarks/results-cuda.md
        wide_edges=not cpu,  # a third of the kernels per step (benchmarks/results-dispatch.md); on the CPU: README
        uncounted_batchnorm=not cpu,  # an add_ per batch norm; the CPU's fast_batchnorm takes them there
        wide_cells=not cpu,  # retraining: fewer ops per step (benchmarks/results-dispatch.md); the CPU's A/B is to run
    )


def resolve_acceleration(config: Any, device: torch.device, log: Callable[[str], None] | None = None) -> Acceleration:
    """The device's policy, overridden by every flag of `config` that is not None (auto).

    CUDA graphs that the run cannot use (``darts_sg.speed.cuda_graphs.graph_blocker``) are turned off;
    when the run asked for them explicitly, `log` gets one line saying why.
    """
    policy = device_policy(device.type, getattr(config, "deterministic", False))
    explicit = {name: getattr(config, name) for name in FLAGS if getattr(config, name, None) is not None}
    acceleration = replace(policy, **explicit)
    check_amp(acceleration.amp, device)
    if acceleration.cuda_graphs:
        blocker = graph_blocker(device, acceleration.amp, world(), acceleration.compile)
        if blocker:
            acceleration = replace(acceleration, cuda_graphs=False)
            if log is not None and explicit.get("cuda_graphs"):
                log(f"--cuda-graphs is off for this run: {blocker}; the steps run eagerly")
    return acceleration


def _substitute(module: nn.Module, cls: type[M]) -> M:
    """A new `cls` module holding `module`'s very parameters, buffers, children and settings.

    `cls` subclasses `module`'s class and changes only how it computes, so optimizers, state-dict
    keys and initial weights are untouched (``nn.SyncBatchNorm.convert_sync_batchnorm`` hands its
    new modules the old parameters the same way).
    """
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a substitute for {type(module).__name__}")
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    return new


def _replace_modules(module: nn.Module, replace: Callable[[nn.Module], nn.Module], done: dict[int, nn.Module]) -> nn.Module:
    """`module` with every module of its tree passed through `replace`, children before their parents
    (a substitute is built from children that are final); a module shared by two parents stays shared."""
    if id(module) in done:
        return done[id(module)]
    for name, child in list(module._modules.items()):
        if child is not None:
            module._modules[name] = _replace_modules(child, replace, done)
    done[id(module)] = new = replace(module)
    return new


def _is_global_pool(module: nn.Module) -> bool:
    return type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1))


def accelerate(model: M, device: torch.device, acceleration: Acceleration) -> M:
    """Swap in the substitutes of `acceleration`, set the layout and flags, and move `model` to `device`."""
    a = acceleration

    def substitute(module: nn.Module) -> nn.Module:
        if a.fast_batchnorm and type(module) is nn.BatchNorm2d:
            return _substitute(module, WideBatchNorm2d)
        if a.uncounted_batchnorm and type(module) is nn.BatchNorm2d and module.momentum is not None:
            return _substitute(module, UncountedBatchNorm2d)
        if a.fast_dilated and is_dilated_depthwise(module):
            return _substitute(module, PolyphaseDilatedConv2d)
        if a.keep_layout and type(module) is FactorizedReduce:
            return _substitute(module, LayoutKeepingFactorizedReduce)
        if a.keep_layout and _is_global_pool(module):
            return _substitute(module, LayoutKeepingGlobalPool)
        if a.lean_relu6 and type(module) is nn.ReLU6:
            return _substitute(module, LeanReLU6)
        if a.lean_blocks and type(module) in (SandGlass, InvertedResidual):
            module.body = _substitute(module.body, LeanSequential)
        elif type(module) is Cell and any(isinstance(edge, MixedOp) for edge in module.edges):
            return _substitute(module, WideCell).widen() if a.wide_edges else module
        elif a.wide_cells and type(module) in (Cell, AuxiliaryHead):
            if type(module) is Cell:
                module = _substitute(module, WideDerivedCell).widen()
            if not (a.recompute_cells or a.compile):  # one ReLU per cell output (recomputed, compiled cells take their own)
                share_input_relus(module)
        elif (a.share_relu or a.fused_sum) and type(module) is MixedOp:
            return _substitute(module, FusedMixedOp).fuse(a.share_relu, a.fused_sum)
        return module

    model = _replace_modules(model, substitute, {})
    if isinstance(model, CellNetwork):
        model.recompute_cells = a.recompute_cells
    model = model.to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = a.cudnn_benchmark
    if a.compile and isinstance(model, CellNetwork):
        for cell in model.cells:
            cell.compile()  # in place: same module tree, parameters and state-dict keys
    return model

