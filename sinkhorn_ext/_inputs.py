"""Normalises the arguments of the public functions and of the reference.

Both take clouds of shape (m, d) or (B, m, d) and optional weights, as the ops do; the
PyTorch losses work on the batched form with explicit weights (`prepare`). Checks on the
tensors themselves (dtypes, sizes, weight values, eps, iters, cost) are made once, at the op
boundary in C++ (csrc/ops/sinkhorn.cpp); here are only the checks that normalising needs, and
those on Python arguments, and `check_tensors`, the op boundary's checks for the pure-PyTorch
losses that have no op.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

COSTS = ("sqeuclidean", "euclidean")
BACKENDS = ("auto", "tensorized", "online")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class Inputs:
    x: torch.Tensor  # (B, m, d)
    y: torch.Tensor  # (B, n, d)
    x_weights: torch.Tensor  # (B, m)
    y_weights: torch.Tensor  # (B, n)
    batched: bool
    dtype: torch.dtype  # the dtype the caller gave, which results are returned in

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        """(B,) results in the caller's shape and dtype (unbatched: a view, whose backward is
        cheaper than that of indexing)."""
        values = values if self.batched else values.view(())
        return values.to(self.dtype)


def check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_options(eps, iters, cost) -> None:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral):
        raise TypeError(f"iters must be an int, got {type(iters).__name__}")
    if not isinstance(cost, str):
        raise TypeError(f"cost must be a string, one of {COSTS}, got {type(cost).__name__}")


def _cloud(t, name: str, rows: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in (2, 3):
        raise ValueError(
            f"{name} must have shape ({rows}, d) or (B, {rows}, d), got {tuple(t.shape)}"
        )
    return t


def _weights(w, name: str, cloud: torch.Tensor, batched: bool) -> torch.Tensor:
    """Weights (B, count) for a batched cloud (B, count, d): w in that shape, or uniform."""
    B, count = cloud.shape[0], cloud.shape[1]
    if w is None:
        # An empty cloud gets empty weights here and its error later (check_tensors).
        return torch.full((B, count), 1.0 / max(count, 1), dtype=cloud.dtype, device=cloud.device)
    expected = (B, count) if batched else (count,)
    if tuple(w.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(w.shape)}")
    return w if batched else w.unsqueeze(0)


def op_arguments(x, y, x_weights=None, y_weights=None):
    """The arguments as the ops take them: clouds (m, d) or (B, m, d), weights or None, in
    float32 where given in half precision; and the caller's dtype, which results are returned
    in. Checked only as far as normalising them needs (the op checks the tensors)."""
    x = _cloud(x, "x", "m")
    y = _cloud(y, "y", "n")
    if x.dim() != y.dim():
        raise ValueError(
            f"x and y must both be batched (3-D) or both unbatched (2-D), got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype != x.dtype:
        raise TypeError(f"y must have the dtype of x ({x.dtype}), got {y.dtype}")
    dtype = x.dtype
    if dtype in _LOW_PRECISION:
        x, y = x.float(), y.float()
    weights = []
    for w, name in ((x_weights, "x_weights"), (y_weights, "y_weights")):
        if w is not None and not isinstance(w, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
        weights.append(w.float() if w is not None and w.dtype in _LOW_PRECISION else w)
    return x, y, weights[0], weights[1], dtype


def prepare(x, y, x_weights=None, y_weights=None) -> Inputs:
    """op_arguments in the batched form, with the weights made explicit: for the losses
    computed in PyTorch (the reference, MMD)."""
    x, y, x_weights, y_weights, dtype = op_arguments(x, y, x_weights, y_weights)
    batched = x.dim() == 3
    if not batched:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    return Inputs(
        x=x,
        y=y,
        x_weights=_weights(x_weights, "x_weights", x, batched),
        y_weights=_weights(y_weights, "y_weights", y, batched),
        batched=batched,
        dtype=dtype,
    )


def debiased(cost_fn, inputs: Inputs, *options) -> torch.Tensor:
    """The Sinkhorn loss 2 W(x, y) - W(x, x) - W(y, y) (paper eq. 4) in the caller's shape and
    dtype, for cost_fn(x, y, x_weights, y_weights, *options) computing W on batched input."""
    x, y, a, b = inputs.x, inputs.y, inputs.x_weights, inputs.y_weights
    loss = 2 * cost_fn(x, y, a, b, *options) - cost_fn(x, x, a, a, *options) - cost_fn(
        y, y, b, b, *options
    )
    return inputs.finish(loss)


def check_tensors(inputs: Inputs) -> None:
    """The checks of the op boundary (check_common in csrc/ops/sinkhorn.cpp), with its
    messages, for a loss computed in PyTorch without the op (mmd_loss)."""
    x, y = inputs.x, inputs.y
    for cloud, name in ((x, "x"), (y, "y")):
        if cloud.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be a float32 or float64 tensor, got {cloud.dtype}")
        B, count, d = cloud.shape
        if B < 1:
            raise ValueError(f"{name} must contain at least one problem (B >= 1), got shape "
                             f"{tuple(cloud.shape)}")
        if count < 1:
            raise ValueError(f"{name} must contain at least one point, got shape "
                             f"{tuple(cloud.shape)}")
        if d < 1:
            raise ValueError(f"{name} must have at least one feature, got shape "
                             f"{tuple(cloud.shape)}")
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y must have the same feature dimension d, got {x.shape[2]} and "
                         f"{y.shape[2]}")
    for w, name, cloud in ((inputs.x_weights, "x_weights", x), (inputs.y_weights, "y_weights", y)):
        if w.dtype != cloud.dtype:
            raise TypeError(f"{name} must have the dtype of its points ({cloud.dtype}), got "
                            f"{w.dtype}")
        if w.device != cloud.device:
            raise ValueError(f"{name} must be on the device of its points ({cloud.device}), got "
                             f"{w.device}")
        if not bool((w >= 0).all()):  # also false for NaN
            raise ValueError(f"{name} must be nonnegative and finite (a probability vector)")
        tolerance = 1e-8 if w.dtype == torch.float64 else 1e-4
        deviation = (w.sum(-1) - 1).abs().max().item()
        if not deviation <= tolerance:
            raise ValueError(f"{name} must sum to 1 (got a sum that is off by {deviation})")
