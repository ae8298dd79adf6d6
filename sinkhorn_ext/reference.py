"""The pure-PyTorch reference: DESIGN.md section 1 written with tensor operations, autograd
through the L iterations. It is the oracle of the tests and the baseline of the benchmarks,
and takes the arguments of :func:`sinkhorn_ext.sinkhorn_cost` (``backend`` is checked and has
no effect: there is one way to run it).

Inputs are normalised like the public functions', but not checked: give it valid input.
"""

from __future__ import annotations

import torch

from sinkhorn_ext._inputs import check_backend, debiased, prepare
from sinkhorn_ext.api import DEFAULT_EPS, DEFAULT_ITERS


def cost_matrix(x: torch.Tensor, y: torch.Tensor, cost: str = "sqeuclidean") -> torch.Tensor:
    """C_ij = c(x_i, y_j) for x (..., m, d), y (..., n, d); the euclidean cost has gradient 0
    where two points coincide."""
    sq = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    if cost == "sqeuclidean":
        return sq
    if cost == "euclidean":
        positive = sq > 0
        return torch.where(positive, torch.where(positive, sq, 1).sqrt(), 0)
    raise ValueError(f'cost must be "sqeuclidean" or "euclidean", got "{cost}"')


def _cost(x, y, x_weights, y_weights, eps, iters, cost):
    C = cost_matrix(x, y, cost)
    log_a, log_b = x_weights.log(), y_weights.log()
    g = torch.zeros_like(y_weights)
    for _ in range(iters):
        f = eps * log_a - eps * torch.logsumexp((g.unsqueeze(-2) - C) / eps, dim=-1)
        g = eps * log_b - eps * torch.logsumexp((f.unsqueeze(-1) - C) / eps, dim=-2)
    P = torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - C) / eps)
    return (C * P).sum((-2, -1))


def sinkhorn_cost(
    x, y, *, eps=DEFAULT_EPS, iters=DEFAULT_ITERS, cost="sqeuclidean",
    x_weights=None, y_weights=None, backend="auto",
):
    """W_L(x, y), paper eq. (8), by autograd through the log-domain iterations."""
    check_backend(backend)
    inputs = prepare(x, y, x_weights, y_weights)
    return inputs.finish(
        _cost(inputs.x, inputs.y, inputs.x_weights, inputs.y_weights, eps, iters, cost)
    )


def sinkhorn_loss(
    x, y, *, eps=DEFAULT_EPS, iters=DEFAULT_ITERS, cost="sqeuclidean",
    x_weights=None, y_weights=None, backend="auto",
):
    """2 W_L(x, y) - W_L(x, x) - W_L(y, y), paper eq. (4)."""
    check_backend(backend)
    return debiased(_cost, prepare(x, y, x_weights, y_weights), eps, iters, cost)
