"""The public functions: the Sinkhorn cost W_L (paper eq. 8) and the Sinkhorn loss (eq. 4)."""

from __future__ import annotations

import torch

from sinkhorn_ext._inputs import check_backend, check_options, op_arguments
from sinkhorn_ext._ops import check_device, ops

DEFAULT_EPS = 0.1
DEFAULT_ITERS = 20

# backend="auto" is tensorized while its m x n arrays (at most four of B x m x n, for the
# problem at hand; the loss's largest is W(x, x) or W(y, y)) stay within this size: it is the
# faster, reading each cost or exp(-C / eps) from memory where the online backend recomputes
# it in every pass (BENCHMARKS.md, on the CPU). Beyond, online, whose memory is linear in
# m + n. The same limit holds on CUDA, where it keeps the tensorized workspace from
# exhausting the device; no GPU measurement has set a better one yet.
TENSORIZED_MAX_BYTES = 2**30


def resolve_backend(backend: str, x: torch.Tensor, y: torch.Tensor, *, loss: bool) -> str:
    """The backend that `backend` names for the clouds x, y (as op_arguments gives them) of
    sinkhorn_loss (loss=True) or sinkhorn_cost: itself, or for "auto" the one the rule above
    picks."""
    if backend != "auto":
        return backend
    batch = x.shape[0] if x.dim() == 3 else 1
    m, n = x.shape[-2], y.shape[-2]
    pairs = max(m, n) ** 2 if loss else m * n
    size = 4 * batch * pairs * x.element_size()
    return "online" if size > TENSORIZED_MAX_BYTES else "tensorized"


def sinkhorn_cost(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    iters: int = DEFAULT_ITERS,
    cost: str = "sqeuclidean",
    x_weights: torch.Tensor | None = None,
    y_weights: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """W_L(x, y) = <C, P_L>: L log-domain Sinkhorn iterations from b^0 = 1 (paper eq. 7, 8).

    Args:
        x: points (m, d), or a batch (B, m, d).
        y: points (n, d), or a batch (B, n, d).
        eps: entropic regularisation epsilon > 0 (default 0.1).
        iters: number L >= 1 of Sinkhorn iterations (default 20); exactly L are run.
        cost: "sqeuclidean" (|x - y|^2, default) or "euclidean" (|x - y|).
        x_weights: probability vector alpha, (m,) or (B, m); uniform 1/m if None.
        y_weights: probability vector beta, (n,) or (B, n); uniform 1/n if None.
        backend: "tensorized" builds the m x n cost matrix once per call; "online" recomputes
            the costs in every pass and needs memory linear in m + n; "auto" (default) is
            tensorized unless its m x n arrays would pass 1 GiB (TENSORIZED_MAX_BYTES).

    Returns:
        A 0-dim tensor, or shape (B,) for batched input, in the dtype of x. Differentiable
        with respect to x, y and the weights: the gradient is that of the L-step algorithm,
        computed by replaying the stored potentials. It is computed in this call, for the
        inputs that require a gradient while grad mode is on; the backward multiplies it by
        the incoming gradient. Under torch.no_grad() only the forward runs.
    """
    check_options(eps, iters, cost)
    check_backend(backend)
    x, y, x_weights, y_weights, dtype = op_arguments(x, y, x_weights, y_weights)
    check_device(x.device)
    value = ops.sinkhorn_cost(x, y, x_weights, y_weights, float(eps), iters, cost,
                              resolve_backend(backend, x, y, loss=False))[0]
    return value if value.dtype == dtype else value.to(dtype)


def sinkhorn_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    iters: int = DEFAULT_ITERS,
    cost: str = "sqeuclidean",
    x_weights: torch.Tensor | None = None,
    y_weights: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The Sinkhorn loss 2 W_L(x, y) - W_L(x, x) - W_L(y, y) (paper eq. 4).

    Takes the arguments of :func:`sinkhorn_cost`. As eps -> 0 (with enough iterations) it
    tends to twice the optimal transport cost; as eps -> infinity to MMD with kernel -c.
    """
    check_options(eps, iters, cost)
    check_backend(backend)
    x, y, x_weights, y_weights, dtype = op_arguments(x, y, x_weights, y_weights)
    check_device(x.device)
    # One op for the three terms: one call, one saved context, and on the CPU the three
    # problems run at once when they are small.
    loss = ops.sinkhorn_loss(x, y, x_weights, y_weights, float(eps), iters, cost,
                             resolve_backend(backend, x, y, loss=True))[0]
    return loss if loss.dtype == dtype else loss.to(dtype)
