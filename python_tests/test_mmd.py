"""mmd_loss: the energy kernel is the eps -> inf limit of the Sinkhorn loss (Theorem 1), the
gaussian kernel matches a float64 numpy formula; weights, batches, gradients, bad arguments."""

import numpy as np
import pytest
import torch

import sinkhorn_ext as sk
from testing import random_problem

KERNELS = ("gaussian", "energy")


def _numpy_gaussian_mmd(x, y, a, b, bandwidth):
    """E k(x, x') + E k(y, y') - 2 E k(x, y), written out pair by pair."""
    def mean_kernel(p, q, wp, wq):
        return sum(wp[i] * wq[j] * np.exp(-np.sum((p[i] - q[j]) ** 2) / (2 * bandwidth**2))
                   for i in range(len(p)) for j in range(len(q)))
    return mean_kernel(x, x, a, a) + mean_kernel(y, y, b, b) - 2 * mean_kernel(x, y, a, b)


@pytest.mark.parametrize("batch", [None, 3])
def test_energy_kernel_is_the_large_eps_limit_of_the_euclidean_sinkhorn_loss(batch):
    x, y, a, b = random_problem(12, 9, 3, batch=batch)
    weights = dict(x_weights=a, y_weights=b)
    mmd = sk.mmd_loss(x, y, kernel="energy", **weights)
    sinkhorn = sk.sinkhorn_loss(x, y, eps=1e6, iters=5, cost="euclidean", **weights)
    torch.testing.assert_close(mmd, sinkhorn, rtol=1e-5, atol=0)
    assert (mmd > 0).all()


@pytest.mark.parametrize("bandwidth", [0.3, 1.0, 4.0])
def test_gaussian_kernel_equals_the_numpy_formula(bandwidth):
    x, y, a, b = random_problem(7, 5, 2)
    expected = _numpy_gaussian_mmd(x.numpy(), y.numpy(), a.numpy(), b.numpy(), bandwidth)
    got = sk.mmd_loss(x, y, bandwidth=bandwidth, x_weights=a, y_weights=b)
    np.testing.assert_allclose(got.item(), expected, rtol=1e-12)


def test_weights_count_and_default_to_uniform():
    x, y, a, b = random_problem(7, 5, 2)
    uniform = sk.mmd_loss(x, y)
    expected = _numpy_gaussian_mmd(x.numpy(), y.numpy(), np.full(7, 1 / 7), np.full(5, 1 / 5), 1.0)
    np.testing.assert_allclose(uniform.item(), expected, rtol=1e-12)
    assert abs(sk.mmd_loss(x, y, x_weights=a, y_weights=b).item() - uniform.item()) > 1e-3


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_weight_equals_dropping_the_point(kernel):
    x, y, a, b = random_problem(6, 5, 2)
    padded = torch.cat([x, 50 + torch.randn(2, 2, dtype=x.dtype)])
    a_padded = torch.cat([a, torch.zeros(2, dtype=a.dtype)])
    torch.testing.assert_close(
        sk.mmd_loss(padded, y, kernel=kernel, x_weights=a_padded, y_weights=b),
        sk.mmd_loss(x, y, kernel=kernel, x_weights=a, y_weights=b))


@pytest.mark.parametrize("kernel", KERNELS)
def test_batched_equals_loop_over_problems(kernel):
    x, y, a, b = random_problem(8, 6, 3, batch=4)
    batched = sk.mmd_loss(x, y, kernel=kernel, x_weights=a, y_weights=b)
    assert batched.shape == (4,)
    looped = torch.stack([sk.mmd_loss(x[k], y[k], kernel=kernel, x_weights=a[k], y_weights=b[k])
                          for k in range(4)])
    torch.testing.assert_close(batched, looped, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_between_a_cloud_and_itself_and_positive_otherwise(kernel):
    x, y, _, _ = random_problem(10, 10, 2, weighted=False)
    assert abs(sk.mmd_loss(x, x, kernel=kernel).item()) < 1e-12
    assert sk.mmd_loss(x, y, kernel=kernel).item() > 1e-3


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradients_match_finite_differences(kernel):
    x, y, a, b = random_problem(6, 4, 2)
    inputs = tuple(t.clone().requires_grad_() for t in (x, y, a, b))

    def loss(x, y, a, b):
        # gradcheck perturbs each weight alone, off the simplex: normalise inside.
        return sk.mmd_loss(x, y, kernel=kernel, bandwidth=0.8, x_weights=a / a.sum(),
                           y_weights=b / b.sum())

    assert torch.autograd.gradcheck(loss, inputs)


def test_low_precision_is_computed_in_float32_and_cast_back():
    x, y, _, _ = random_problem(9, 7, 2, dtype=torch.float32, weighted=False)
    got = sk.mmd_loss(x.half(), y.half())
    assert got.dtype == torch.float16
    expected = sk.mmd_loss(x.half().double(), y.half().double())
    torch.testing.assert_close(got.double(), expected, rtol=2e-3, atol=1e-4)


X = torch.randn(5, 2)
Y = torch.randn(4, 2)


# The tensor errors are those of sinkhorn_loss, word for word up to the shape's brackets.
@pytest.mark.parametrize("fn", [sk.sinkhorn_loss, sk.mmd_loss])
@pytest.mark.parametrize("error,match,x,y,kwargs", [
    (ValueError, r"x must have shape \(m, d\) or \(B, m, d\), got \(5,\)", torch.randn(5), Y, {}),
    (ValueError, r"must both be batched \(3-D\) or both unbatched", X, torch.randn(1, 4, 2), {}),
    (ValueError, r"x and y must have the same feature dimension d, got 2 and 3",
     X, torch.randn(4, 3), {}),
    (ValueError, r"x and y must have the same batch size, got 2 and 3",
     torch.randn(2, 5, 2), torch.randn(3, 4, 2), {}),
    (ValueError, r"x must contain at least one problem \(B >= 1\)",
     torch.randn(0, 5, 2), torch.randn(0, 4, 2), {}),
    (ValueError, r"x must contain at least one point", torch.randn(0, 2), Y, {}),
    (ValueError, r"x must have at least one feature", torch.randn(5, 0), torch.randn(4, 0), {}),
    (TypeError, r"x must be a float32 or float64 tensor", X.long(), Y.long(), {}),
    (TypeError, r"y must have the dtype of x \(torch.float32\), got torch.float64", X, Y.double(),
     {}),
    (TypeError, r"x must be a torch.Tensor, got list", [[0.0, 1.0]], Y, {}),
    (TypeError, r"x_weights must have the dtype of its points", X, Y,
     {"x_weights": torch.full((5,), 0.2, dtype=torch.float64)}),
    (ValueError, r"x_weights must have shape \(5,\), got \(4,\)", X, Y,
     {"x_weights": torch.full((4,), 0.25)}),
    (ValueError, r"y_weights must have shape \(2, 4\), got \(4,\)",
     torch.randn(2, 5, 2), torch.randn(2, 4, 2), {"y_weights": torch.full((4,), 0.25)}),
    (ValueError, r"x_weights must be nonnegative", X, Y,
     {"x_weights": torch.tensor([0.5, 0.5, 0.5, -0.5, 0.0])}),
    (ValueError, r"y_weights must be nonnegative", X, Y,
     {"y_weights": torch.tensor([0.25, 0.25, 0.25, float("nan")])}),
    (ValueError, r"x_weights must sum to 1", X, Y, {"x_weights": torch.full((5,), 0.3)}),
    (TypeError, r"y_weights must be a torch.Tensor or None, got list", X, Y,
     {"y_weights": [0.25] * 4}),
])
def test_bad_tensors_get_the_errors_of_sinkhorn_loss(fn, error, match, x, y, kwargs):
    with pytest.raises(error, match=match):
        fn(x, y, **kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"kernel": "laplacian"}, ValueError,
     r"kernel must be one of \('gaussian', 'energy'\), got 'laplacian'"),
    ({"bandwidth": 0.0}, ValueError, r"bandwidth must be a finite number > 0, got 0.0"),
    ({"bandwidth": float("inf")}, ValueError, r"bandwidth must be a finite number > 0"),
    ({"bandwidth": "1"}, TypeError, r"bandwidth must be a real number, got str"),
])
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        sk.mmd_loss(X, Y, **kwargs)
