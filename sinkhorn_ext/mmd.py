"""The squared maximum mean discrepancy, the paper's baseline (Section 4), in pure PyTorch.

    MMD_k^2(alpha, beta) = E k(x, x') + E k(y, y') - 2 E k(x, y)

With the energy kernel k = -||x - y|| this is MMD_{-c} for the euclidean cost c, the eps -> inf
limit of the Sinkhorn loss (Theorem 1).
"""

from __future__ import annotations

import math
import numbers

import torch

from sinkhorn_ext._inputs import check_tensors, debiased, prepare

KERNELS = ("gaussian", "energy")


def _distances(x, y):
    # The exact pairwise form (no |x|^2 + |y|^2 - 2xy cancellation); its gradient is 0 where
    # two points coincide, as for the euclidean cost of the Sinkhorn loss.
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def _minus_mean_kernel(x, y, x_weights, y_weights, kernel, bandwidth):
    """-E k(x, y) = -alpha^T k(X, Y) beta on batched input: in debiased's
    2 W(x, y) - W(x, x) - W(y, y) it gives MMD_k^2."""
    distances = _distances(x, y)
    if kernel == "gaussian":
        k = torch.exp(-distances.square() / (2 * bandwidth**2))
    else:
        k = -distances
    return -torch.einsum("bi,bij,bj->b", x_weights, k, y_weights)


def _check_options(kernel, bandwidth) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Real):
        raise TypeError(f"bandwidth must be a real number, got {type(bandwidth).__name__}")
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth}")


def mmd_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: str = "gaussian",
    bandwidth: float = 1.0,
    x_weights: torch.Tensor | None = None,
    y_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The squared MMD E k(x, x') + E k(y, y') - 2 E k(x, y) between weighted clouds.

    Args:
        x: points (m, d), or a batch (B, m, d).
        y: points (n, d), or a batch (B, n, d).
        kernel: "gaussian", k(x, y) = exp(-||x - y||^2 / (2 bandwidth^2)) (default), or
            "energy", k(x, y) = -||x - y||, which gives the eps -> inf limit of
            ``sinkhorn_loss(..., cost="euclidean")``.
        bandwidth: the gaussian kernel's sigma > 0 (default 1); the energy kernel has none.
        x_weights: probability vector alpha, (m,) or (B, m); uniform 1/m if None.
        y_weights: probability vector beta, (n,) or (B, n); uniform 1/n if None.

    Returns:
        A 0-dim tensor, or shape (B,) for batched input, in the dtype of x; differentiable
        with respect to the points and the weights. The expectations include the pairs i = j
        (the V-statistic), like the self-terms of the Sinkhorn loss.
    """
    _check_options(kernel, bandwidth)
    inputs = prepare(x, y, x_weights, y_weights)
    check_tensors(inputs)
    return debiased(_minus_mean_kernel, inputs, kernel, bandwidth)
