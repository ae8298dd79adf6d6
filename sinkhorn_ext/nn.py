"""torch.nn.Module form of the Sinkhorn loss."""

from __future__ import annotations

import torch

from sinkhorn_ext._inputs import check_backend, check_options
from sinkhorn_ext.api import DEFAULT_EPS, DEFAULT_ITERS, sinkhorn_loss

REDUCTIONS = ("mean", "sum", "none")


class SinkhornLoss(torch.nn.Module):
    """``SinkhornLoss(eps, iters, cost, backend, reduction)(x, y, x_weights=None,
    y_weights=None)``: :func:`sinkhorn_ext.sinkhorn_loss`, reduced over the batch by
    ``reduction`` ("mean" by default, "sum" or "none"). Unbatched input gives a 0-dim loss
    whatever the reduction."""

    def __init__(
        self,
        eps: float = DEFAULT_EPS,
        iters: int = DEFAULT_ITERS,
        cost: str = "sqeuclidean",
        backend: str = "auto",
        reduction: str = "mean",
    ):
        super().__init__()
        check_options(eps, iters, cost)
        check_backend(backend)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.eps, self.iters, self.cost = eps, iters, cost
        self.backend, self.reduction = backend, reduction

    def forward(self, x, y, x_weights=None, y_weights=None) -> torch.Tensor:
        loss = sinkhorn_loss(
            x, y, eps=self.eps, iters=self.iters, cost=self.cost,
            x_weights=x_weights, y_weights=y_weights, backend=self.backend,
        )
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, iters={self.iters}, cost={self.cost!r}, "
            f"backend={self.backend!r}, reduction={self.reduction!r}"
        )
