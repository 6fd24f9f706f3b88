"""The DARTS ImageNet evaluation network (mobile setting): the CIFAR skeleton with ImageNet stems.

DARTS (Liu et al., ICLR 2019, Sec. 3.3 and the reference ``NetworkImageNet``) evaluates a cell on
ImageNet with two stride-2 stems that bring a 224x224 image to 28x28 before the first cell,
14 cells with C = 48 (reductions at 1/3 and 2/3 of the depth), an auxiliary head after the
second reduction cell, average pooling over the final 7x7 map and a linear classifier. Only the
stem and the auxiliary head differ from the CIFAR network; the cells and the skeleton are
``darts_sg.model.network``'s. The global pooling here is adaptive, which equals the reference's
``AvgPool2d(7)`` at 224x224 and also works at the smaller sizes used in tests.
"""

from __future__ import annotations

import torch
from torch import nn

from .genotype import Genotype, load_genotype
from .network import AuxiliaryHead, Network
from .ops import OpOptions

__all__ = ["ImageNetStem", "AuxiliaryHeadImageNet", "build_imagenet_network"]


def _conv_bn(C_in: int, C_out: int) -> list[nn.Module]:
    return [nn.Conv2d(C_in, C_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_out)]


class ImageNetStem(nn.Module):
    """stem0: conv3x3/2 (3 -> C/2) BN ReLU conv3x3/2 (C/2 -> C) BN; stem1: ReLU conv3x3/2 (C -> C) BN.

    Returns (s0, s1): the first cell's inputs, s1 at half the resolution of s0 (1/4 and 1/8 of
    the image), so the first cell reduces its s0 input with a factorized reduce.
    """

    reduces = True

    def __init__(self, C: int):
        super().__init__()
        self.out_channels = (C, C)
        self.stem0 = nn.Sequential(*_conv_bn(3, C // 2), nn.ReLU(inplace=False), *_conv_bn(C // 2, C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False), *_conv_bn(C, C))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def AuxiliaryHeadImageNet(C: int, num_classes: int) -> AuxiliaryHead:
    """The auxiliary head on ImageNet: after the second reduction cell (7x7 at 224x224)."""
    return AuxiliaryHead(C, num_classes, pool_stride=2, final_norm=False)


def build_imagenet_network(
    genotype: Genotype | str,
    C: int = 48,
    layers: int = 14,
    num_classes: int = 1000,
    auxiliary: bool = False,
    options: OpOptions | None = None,
) -> Network:
    """The DARTS ImageNet network of a genotype (object, JSON path, name or legacy string)."""
    return Network(
        load_genotype(genotype), C, layers, num_classes, auxiliary, options,
        stem=ImageNetStem(C), make_aux_head=AuxiliaryHeadImageNet,
    )  # fmt: skip
