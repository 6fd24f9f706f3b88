"""Candidate operations of the search space and their registry.

Every op is built by a factory with one signature ``factory(C, stride, affine, options)``
that returns a module mapping ``(N, C, H, W)`` to ``(N, C, H / stride, W / stride)``.
The eight classic DARTS primitives follow the reference implementation exactly
(ReLU-Conv-BN order, separable convolutions applied twice, factorized reduce for a
stride-2 skip); ``sg_block`` is the MobileNeXt sandglass block and ``inv_res`` the
MobileNetV2 inverted residual. Every module here is the plain one of the papers (torch's
``nn.BatchNorm2d``, a dilated ``nn.Conv2d``); faster exact equivalents for a device are put in
their place from outside, by ``darts_sg.speed.accelerate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..utils.errors import UserError

__all__ = [
    "OpOptions",
    "CLASSIC_PRIMITIVES",
    "OP_FACTORIES",
    "SEARCH_SPACES",
    "build_op",
    "resolve_space",
    "sandglass_hidden_width",
]


@dataclass(frozen=True)
class OpOptions:
    """Tunable parameters of the block ops (the classic ops have none).

    sg_ratio: sandglass reduction ratio t (hidden width = C / t).
    sg_identity: identity tensor multiplier in (0, 1]: the share of channels that get the shortcut.
    sg_min_hidden: floor of the sandglass hidden width, so that it never collapses to 1-2
        channels at small C (C=16, t=6 would give 2).
    ir_expansion: inverted-residual expansion ratio t (hidden width = t * C).
    """

    sg_ratio: float = 6.0
    sg_identity: float = 1.0
    sg_min_hidden: int = 8
    ir_expansion: int = 6

    def __post_init__(self) -> None:
        if self.sg_ratio <= 0:
            raise UserError(f"sg_ratio must be positive, got {self.sg_ratio}")
        if not 0 < self.sg_identity <= 1:
            raise UserError(f"sg_identity must be in (0, 1], got {self.sg_identity}")
        if self.sg_min_hidden < 1:
            raise UserError(f"sg_min_hidden must be >= 1, got {self.sg_min_hidden}")
        if self.ir_expansion < 1:
            raise UserError(f"ir_expansion must be >= 1, got {self.ir_expansion}")


class Zero(nn.Module):
    """The `none` op: a zero tensor of the output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, batch norm: the reference DARTS conv unit."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise conv, pointwise conv, batch norm."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Separable convolution applied twice (the first with the stride), as in DARTS."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs, concatenated."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise UserError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def sandglass_hidden_width(C: int, options: OpOptions) -> int:
    """Bottleneck width of the sandglass block: round(C / t), floored at `sg_min_hidden` (and at most C)."""
    return min(C, max(options.sg_min_hidden, round(C / options.sg_ratio)))


class SandGlass(nn.Module):
    """MobileNeXt sandglass block: dw3x3-BN-ReLU6, pw reduce-BN, pw expand-BN-ReLU6, dw3x3(stride)-BN.

    The shortcut joins the wide tensors; it is added only when stride is 1 and input and output
    widths match, and then only to the first round(identity * C) channels.
    """

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool, options: OpOptions):
        super().__init__()
        hidden = sandglass_hidden_width(C_in, options)
        self.body = nn.Sequential(
            nn.Conv2d(C_in, C_in, 3, 1, 1, groups=C_in, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU6(inplace=True),
            nn.Conv2d(C_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden, affine=affine),
            nn.Conv2d(hidden, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
            nn.ReLU6(inplace=True),
            nn.Conv2d(C_out, C_out, 3, stride, 1, groups=C_out, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )
        self.use_shortcut = stride == 1 and C_in == C_out
        self.identity_channels = max(1, round(options.sg_identity * C_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.use_shortcut:
            return out
        k = self.identity_channels
        if k == out.shape[1]:
            return out + x
        return torch.cat([out[:, :k] + x[:, :k], out[:, k:]], dim=1)


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: pw expand-BN-ReLU6, dw3x3(stride)-BN-ReLU6, pw linear-BN."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool, options: OpOptions):
        super().__init__()
        hidden = C_in * options.ir_expansion
        self.body = nn.Sequential(
            nn.Conv2d(C_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden, affine=affine),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden, affine=affine),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )
        self.use_shortcut = stride == 1 and C_in == C_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.use_shortcut else out


OpFactory = Callable[[int, int, bool, OpOptions], nn.Module]

OP_FACTORIES: dict[str, OpFactory] = {
    "none": lambda C, stride, affine, o: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine, o: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine, o: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": lambda C, stride, affine, o: nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine, o: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine, o: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine, o: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine, o: DilConv(C, C, 5, stride, 4, 2, affine),
    "sg_block": lambda C, stride, affine, o: SandGlass(C, C, stride, affine, o),
    "inv_res": lambda C, stride, affine, o: InvertedResidual(C, C, stride, affine, o),
}

CLASSIC_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

SEARCH_SPACES: dict[str, tuple[str, ...]] = {
    "darts": CLASSIC_PRIMITIVES,
    "sgblock": CLASSIC_PRIMITIVES + ("sg_block",),
    "invres": CLASSIC_PRIMITIVES + ("inv_res",),
}

POOLS = ("max_pool_3x3", "avg_pool_3x3")


def check_op_name(name: str) -> None:
    """Raise a UserError naming the valid ops if `name` is not a registered op."""
    if name not in OP_FACTORIES:
        raise UserError(f"unknown op {name!r}; valid ops: {', '.join(OP_FACTORIES)}")


def build_op(name: str, C: int, stride: int, affine: bool, options: OpOptions | None = None) -> nn.Module:
    """Build the op `name` for `C` channels and the given stride."""
    check_op_name(name)
    return OP_FACTORIES[name](C, stride, affine, options or OpOptions())


def resolve_space(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Turn a space name (`darts`, `sgblock`, `invres`) or a comma-separated op list into op names."""
    if isinstance(spec, str):
        if spec in SEARCH_SPACES:
            return SEARCH_SPACES[spec]
        names = [part.strip() for part in spec.split(",") if part.strip()]
        if len(names) == 1 and names[0] not in OP_FACTORIES:
            raise UserError(
                f"unknown search space or op {spec!r}; spaces: {', '.join(SEARCH_SPACES)}; "
                f"or a comma-separated list of ops from: {', '.join(OP_FACTORIES)}"
            )
    else:
        names = list(spec)
    if not names:
        raise UserError("the op list is empty; name a space or at least one op")
    for name in names:
        check_op_name(name)
    if len(set(names)) != len(names):
        raise UserError(f"the op list names an op twice: {','.join(names)}")
    if all(name == "none" for name in names):
        raise UserError("the op list holds only 'none'; add at least one real op")
    return tuple(names)
