"""Baseline: the paper's Algorithm 2 written literally in PyTorch, in the scaling domain, with
autograd through the L iterations. This is the "obvious implementation" that the fused kernels
are compared with; it is a benchmark baseline, not part of the package.

With K = exp(-C/eps) and b^0 = 1, for l = 1..L:  a = alpha / (K b),  b = beta / (K^T a);
then W_L = sum_ij C_ij a_i K_ij b_j (paper eq. 8) and the loss is
2 W_L(x, y) - W_L(x, x) - W_L(y, y) (eq. 4). These are the iterates of
sinkhorn_ext.reference, so the two agree to rounding wherever K does not underflow
(DESIGN.md section 1); see benchmarks.suite.scaling_is_safe for where that is.

Unbatched clouds (m, d), (n, d) and the "sqeuclidean" cost only.
"""

from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C_ij = |x_i - y_j|^2 through one GEMM (|x|^2 + |y|^2 - 2 x y^T), the usual PyTorch idiom:
    O(mn) memory at any d, where broadcasting x_i - y_j would hold an m x n x d tensor."""
    sq = (x * x).sum(-1).unsqueeze(-1) + (y * y).sum(-1).unsqueeze(-2) - 2 * x @ y.transpose(-2, -1)
    return sq.clamp_min(0)  # rounding can make a zero distance slightly negative


def sinkhorn_cost(x, y, *, eps, iters, x_weights=None, y_weights=None) -> torch.Tensor:
    """W_L(x, y) by Algorithm 2 in the scaling domain."""
    alpha = x.new_full((x.shape[0],), 1 / x.shape[0]) if x_weights is None else x_weights
    beta = y.new_full((y.shape[0],), 1 / y.shape[0]) if y_weights is None else y_weights
    C = squared_distances(x, y)
    K = torch.exp(-C / eps)
    b = torch.ones_like(beta)
    for _ in range(iters):
        a = alpha / (K @ b)
        b = beta / (K.T @ a)
    return (C * a.unsqueeze(1) * K * b.unsqueeze(0)).sum()


def sinkhorn_loss(x, y, *, eps, iters, x_weights=None, y_weights=None) -> torch.Tensor:
    """2 W_L(x, y) - W_L(x, x) - W_L(y, y), paper eq. (4)."""
    return (
        2 * sinkhorn_cost(x, y, eps=eps, iters=iters, x_weights=x_weights, y_weights=y_weights)
        - sinkhorn_cost(x, x, eps=eps, iters=iters, x_weights=x_weights, y_weights=x_weights)
        - sinkhorn_cost(y, y, eps=eps, iters=iters, x_weights=y_weights, y_weights=y_weights)
    )
