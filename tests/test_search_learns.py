"""The search learns: on a planted problem where one op is clearly best, a short bilevel
search ranks that op first by a stated margin.

The planted problem: one supernet edge (the real MixedOp over the 8 DARTS ops, C=4) must map
noise images to their batch-normalised 3x3 max pool. `max_pool_3x3` (followed by its
non-affine batch norm, as in the supernet) produces the target exactly; no other op can, and
the convolutions start from random weights. The search alternates, as first-order DARTS does,
an alpha step (Adam with DARTS's betas) on one batch and a weight step (SGD) on another.
"""

import torch
import torch.nn.functional as F

from darts_sg.model.cells import MixedOp
from darts_sg.model.genotype import derive_cell
from darts_sg.model.ops import SEARCH_SPACES, OpOptions

PRIMITIVES = SEARCH_SPACES["darts"]
C, STEPS = 4, 30


def planted_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(16, C, 8, 8, generator=generator)
    target = F.max_pool2d(x, 3, 1, 1)
    mean, var = target.mean((0, 2, 3), keepdim=True), target.var((0, 2, 3), keepdim=True, unbiased=False)
    return x, (target - mean) / (var + 1e-5).sqrt()


def test_short_search_ranks_the_planted_op_first():
    torch.manual_seed(0)
    edge = MixedOp(C, 1, PRIMITIVES, OpOptions())
    alpha = torch.nn.Parameter(1e-3 * torch.randn(len(PRIMITIVES)))
    alpha_optimizer = torch.optim.Adam([alpha], lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)
    weight_optimizer = torch.optim.SGD(edge.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    data = torch.Generator().manual_seed(1)
    start = F.softmax(alpha, -1).detach()
    for _ in range(STEPS):
        x, target = planted_batch(data)  # alpha step: the weights are held fixed
        (alpha.grad,) = torch.autograd.grad(F.mse_loss(edge(x, F.softmax(alpha, -1)), target), [alpha])
        alpha_optimizer.step()
        x, target = planted_batch(data)  # weight step: the alphas are held fixed
        weight_optimizer.zero_grad()
        F.mse_loss(edge(x, F.softmax(alpha, -1).detach()), target).backward()
        weight_optimizer.step()
    weights = F.softmax(alpha, -1).detach()
    ranking = [PRIMITIVES[k] for k in weights.argsort(descending=True)]
    best, runner_up = weights.sort(descending=True).values[:2].tolist()
    assert ranking[0] == "max_pool_3x3", dict(zip(PRIMITIVES, weights.tolist()))
    # The margin: after 30 alpha steps the planted op holds at least 40% of the weight, 3x its
    # share at the start and 3x the runner-up's (measured: 64% against 12%).
    planted = PRIMITIVES.index("max_pool_3x3")
    assert best >= 0.40 and best >= 3 * start[planted] and best >= 3 * runner_up
    # Derivation picks it too (a node fed by this edge twice: both edges are max_pool_3x3).
    assert derive_cell(torch.stack([weights, weights]), PRIMITIVES, 1) == (("max_pool_3x3", 0), ("max_pool_3x3", 1))
