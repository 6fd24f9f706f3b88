"""The one macro-network skeleton, and its two uses: the supernet and the derived network.

``CellNetwork`` holds the stem, the stack of cells (reductions at 1/3 and 2/3 of the depth),
global pooling, the classifier and the optional auxiliary head. ``Supernet`` fills it with
mixed-op cells and owns the architecture parameters; ``Network`` fills it with the cells of a
genotype. The CIFAR stem is the default; the ImageNet network (``darts_sg.model.imagenet``) is the
same skeleton with its own stem and auxiliary head.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import UserError
from .cells import Cell, DropPath, MixedOp
from .genotype import Genotype, derive_genotype
from .ops import OpOptions, build_op, resolve_space
from .recompute import recomputed_call

__all__ = ["CellNetwork", "Supernet", "Network", "AuxiliaryHead", "build_supernet", "build_network", "count_params"]

CellFactory = Callable[[int, int, int, bool, bool], Cell]
"""make_cell(C_pp, C_p, C, reduction, reduction_prev) -> Cell"""

AuxHeadFactory = Callable[[int, int], nn.Module]
"""make_aux_head(C, num_classes) -> auxiliary classifier"""


def reduction_layers(layers: int) -> tuple[int, int]:
    """Indices of the two reduction cells: at 1/3 and 2/3 of the depth."""
    return layers // 3, 2 * layers // 3


def _check_sizes(C: int, layers: int, num_classes: int) -> None:
    for name, value in (("channels C", C), ("layers", layers), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if C % 2:
        raise UserError(f"channels C must be even (factorized reduce halves it), got {C}")


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier after the second reduction cell, reference layout.

    On CIFAR (the default) it reads the 8x8 map with a stride-3 pool; on ImageNet
    (`pool_stride=2`, `final_norm=False`) the 7x7 map, and, as in the reference, the
    768-channel convolution has no batch norm after it (the paper's experiments ran without it).
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int = 3, final_norm: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if final_norm else []),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class CellNetwork(nn.Module):
    """Stem, `layers` cells, global pooling and a linear classifier (+ optional auxiliary head).

    The default stem is DARTS' CIFAR stem (conv3x3 to `stem_multiplier` * C, BN), whose output
    feeds both inputs of the first cell. A `stem` module given instead returns the pair
    (s0, s1) of the first cell's inputs and has attributes ``out_channels`` (C_s0, C_s1) and
    ``reduces`` (s1 has half the resolution of s0), as the ImageNet stems do.
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        make_cell: CellFactory,
        auxiliary: bool = False,
        stem_multiplier: int = 3,
        stem: nn.Module | None = None,
        make_aux_head: AuxHeadFactory | None = None,
    ):
        super().__init__()
        _check_sizes(C, layers, num_classes)
        self.C, self.layers, self.num_classes = C, layers, num_classes
        if stem is None:
            C_stem = stem_multiplier * C
            self.stem = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
            (C_pp, C_p), reduction_prev = (C_stem, C_stem), False
        else:
            self.stem = stem
            (C_pp, C_p), reduction_prev = stem.out_channels, stem.reduces
        C_curr = C
        reductions = reduction_layers(layers)
        self.aux_index = reductions[1]
        self.cells = nn.ModuleList()
        C_aux = C_p
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = make_cell(C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self.aux_index:
                C_aux = C_p
        self.aux_head = (make_aux_head or AuxiliaryHead)(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        # Keep only each cell's inputs in the forward pass and recompute the rest in backward
        # (less memory, more time; see darts_sg.model.recompute). Not part of the state dict.
        self.recompute_cells = False

    def cell_kwargs(self) -> tuple[dict, dict]:
        """Extra arguments for (normal, reduction) cells in this forward pass."""
        return {}, {}

    def stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two inputs (s0, s1) of the first cell."""
        out = self.stem(x)
        return out if isinstance(out, tuple) else (out, out)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the auxiliary logits when the head exists and the model is training."""
        normal_kwargs, reduce_kwargs = self.cell_kwargs()
        recompute = self.recompute_cells and torch.is_grad_enabled()
        s0, s1 = self.stems(x)
        logits_aux = None
        for i, cell in enumerate(self.cells):
            kwargs = reduce_kwargs if cell.reduction else normal_kwargs
            s0, s1 = s1, recomputed_call(cell, s0, s1, **kwargs) if recompute else cell(s0, s1, **kwargs)
            if i == self.aux_index and self.aux_head is not None and self.training:
                logits_aux = self.aux_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]


def _all_edges(steps: int) -> list[tuple[int, int]]:
    return [(node, src) for node in range(steps) for src in range(node + 2)]


class Supernet(CellNetwork):
    """The DARTS search network: every edge a MixedOp; owns the architecture parameters.

    ``weights()`` and ``alphas()`` give the two disjoint parameter groups of the bilevel problem.
    With ``partial_channels`` > 1 it is PC-DARTS: partial channel connections plus edge
    normalisation parameters (betas), which belong to ``alphas()``.
    """

    def __init__(
        self,
        primitives: Sequence[str],
        C: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        steps: int = 4,
        options: OpOptions | None = None,
        partial_channels: int = 1,
        stem_multiplier: int = 3,
        skip_none: bool = True,
    ):
        if steps < 1:
            raise UserError(f"steps must be positive, got {steps}")
        if partial_channels < 1:
            raise UserError(f"partial_channels must be positive, got {partial_channels}")
        self.primitives = tuple(primitives)
        self.steps = steps
        self.partial_channels = partial_channels
        options = options or OpOptions()
        edges = _all_edges(steps)
        concat = range(2, 2 + steps)

        def make_cell(C_pp, C_p, C_cell, reduction, reduction_prev):
            return Cell(
                C_pp, C_p, C_cell, reduction, reduction_prev, edges, concat,
                lambda k, C_edge, stride: MixedOp(C_edge, stride, self.primitives, options, partial_channels, skip_none),
                affine=False, drop_path=False,
            )  # fmt: skip

        super().__init__(C, num_classes, layers, make_cell, auxiliary=False, stem_multiplier=stem_multiplier)
        n_edges, n_ops = len(edges), len(self.primitives)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        if partial_channels > 1:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(n_edges))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(n_edges))
        else:
            self.beta_normal = self.beta_reduce = None

    # --- parameter groups -------------------------------------------------------------------
    def alpha_names(self) -> list[str]:
        names = ["alpha_normal", "alpha_reduce"]
        return names + (["beta_normal", "beta_reduce"] if self.partial_channels > 1 else [])

    def alphas(self) -> list[nn.Parameter]:
        """The architecture parameters."""
        return [getattr(self, name) for name in self.alpha_names()]

    def named_weights(self) -> Iterator[tuple[str, nn.Parameter]]:
        arch = set(self.alpha_names())
        return ((n, p) for n, p in self.named_parameters() if n not in arch)

    def weights(self) -> list[nn.Parameter]:
        """The network weights (everything but the architecture parameters)."""
        return [p for _, p in self.named_weights()]

    # --- architecture ------------------------------------------------------------------------
    def edge_normalisation(self, beta: torch.Tensor) -> torch.Tensor:
        """PC-DARTS: softmax of the betas over the incoming edges of each node."""
        parts, start = [], 0
        for node in range(self.steps):
            parts.append(F.softmax(beta[start : start + node + 2], dim=-1))
            start += node + 2
        return torch.cat(parts)

    def cell_kwargs(self) -> tuple[dict, dict]:
        normal = {"edge_weights": F.softmax(self.alpha_normal, dim=-1)}
        reduce = {"edge_weights": F.softmax(self.alpha_reduce, dim=-1)}
        if self.partial_channels > 1:
            normal["edge_scales"] = self.edge_normalisation(self.beta_normal)
            reduce["edge_scales"] = self.edge_normalisation(self.beta_reduce)
        return normal, reduce

    def op_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(normal, reduce) edge x op weights used for derivation (softmax; times edge weights for PC-DARTS)."""
        with torch.no_grad():
            normal, reduce = self.cell_kwargs()
            wn, wr = normal["edge_weights"], reduce["edge_weights"]
            if self.partial_channels > 1:
                wn = wn * normal["edge_scales"][:, None]
                wr = wr * reduce["edge_scales"][:, None]
            return wn.detach().cpu(), wr.detach().cpu()

    def genotype(self, max_skip: int | None = None) -> Genotype:
        """The derived discrete architecture (top-2 non-`none` edges per node; at most
        `max_skip` skip connections in the normal cell when given, P-DARTS)."""
        wn, wr = self.op_weights()
        return derive_genotype(wn, wr, self.primitives, self.steps, max_skip)


class Network(CellNetwork):
    """The discrete network of a genotype, for retraining; drop path is set via `drop_path_prob`."""

    _drop_path_prob = 0.0

    def __init__(
        self,
        genotype: Genotype,
        C: int = 36,
        layers: int = 20,
        num_classes: int = 10,
        auxiliary: bool = False,
        options: OpOptions | None = None,
        stem_multiplier: int = 3,
        stem: nn.Module | None = None,
        make_aux_head: AuxHeadFactory | None = None,
    ):
        genotype.validate()
        self.genotype = genotype
        options = options or OpOptions()

        def make_cell(C_pp, C_p, C_cell, reduction, reduction_prev):
            cell_edges = genotype.reduce if reduction else genotype.normal
            concat = genotype.reduce_concat if reduction else genotype.normal_concat
            ops = [op for op, _ in cell_edges]
            edges = [(k // 2, src) for k, (_, src) in enumerate(cell_edges)]
            return Cell(
                C_pp, C_p, C_cell, reduction, reduction_prev, edges, concat,
                lambda k, C_edge, stride: build_op(ops[k], C_edge, stride, affine=True, options=options),
                affine=True,
            )  # fmt: skip

        super().__init__(
            C, num_classes, layers, make_cell, auxiliary=auxiliary, stem_multiplier=stem_multiplier,
            stem=stem, make_aux_head=make_aux_head,
        )  # fmt: skip

    @property
    def drop_path_prob(self) -> float:
        """The drop-path probability of every droppable edge (0 = off)."""
        return self._drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, p: float) -> None:
        self._drop_path_prob = p
        for module in self.modules():
            if isinstance(module, DropPath):
                module.p = p


def build_supernet(
    ops: str | Sequence[str] = "sgblock",
    C: int = 16,
    layers: int = 8,
    num_classes: int = 10,
    **kwargs,
) -> Supernet:
    """Build a search supernet for a space name (`darts`, `sgblock`, `invres`) or a list of ops."""
    return Supernet(resolve_space(ops), C, layers, num_classes, **kwargs)


def build_network(
    genotype: Genotype | str,
    C: int = 36,
    layers: int = 20,
    num_classes: int = 10,
    auxiliary: bool = False,
    **kwargs,
) -> Network:
    """Build the discrete network of a genotype (object, JSON path, name, or legacy string)."""
    from .genotype import load_genotype

    return Network(load_genotype(genotype), C, layers, num_classes, auxiliary, **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of weight parameters (a supernet's architecture parameters excluded)."""
    params = model.weights() if isinstance(model, Supernet) else model.parameters()
    return sum(p.numel() for p in params)
