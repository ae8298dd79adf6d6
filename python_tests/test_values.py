"""sinkhorn_cost and sinkhorn_loss equal the pure-PyTorch reference for every L, not only at
convergence, across shapes, eps, costs, dtypes, weights and batches."""

import pytest
import torch

import sinkhorn_ext as sk
from testing import COSTS, DTYPES, TOLERANCE, random_problem


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("iters", [1, 2, 7, 30])
@pytest.mark.parametrize("eps", [0.05, 1.0, 25.0])
def test_cost_equals_reference_in_float64(cost, iters, eps):
    x, y, a, b = random_problem(23, 17, 3)
    kw = dict(eps=eps, iters=iters, cost=cost, x_weights=a, y_weights=b)
    torch.testing.assert_close(sk.sinkhorn_cost(x, y, **kw), sk.reference.sinkhorn_cost(x, y, **kw),
                               **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (1, 9, 2), (16, 16, 2), (33, 65, 5), (40, 12, 64)])
def test_loss_equals_reference(dtype, cost, m, n, d):
    x, y, a, b = random_problem(m, n, d, dtype=dtype)
    kw = dict(eps=0.5, iters=10, cost=cost, x_weights=a, y_weights=b)
    expected = sk.reference.sinkhorn_loss(x.double(), y.double(), **{
        **kw, "x_weights": a.double(), "y_weights": b.double()})
    got = sk.sinkhorn_loss(x, y, **kw)
    assert got.dtype == dtype and got.shape == ()
    torch.testing.assert_close(got.double(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("cost", COSTS)
def test_batched_equals_loop_over_problems(cost):
    x, y, a, b = random_problem(11, 14, 3, batch=4)
    kw = dict(eps=0.3, iters=8, cost=cost)
    batched = sk.sinkhorn_loss(x, y, x_weights=a, y_weights=b, **kw)
    assert batched.shape == (4,)
    looped = torch.stack([sk.sinkhorn_loss(x[k], y[k], x_weights=a[k], y_weights=b[k], **kw)
                          for k in range(4)])
    torch.testing.assert_close(batched, looped, rtol=1e-13, atol=1e-14)


def test_default_weights_are_uniform():
    x, y, _, _ = random_problem(9, 6, 2, weighted=False)
    uniform = dict(x_weights=torch.full((9,), 1 / 9, dtype=torch.float64),
                   y_weights=torch.full((6,), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(sk.sinkhorn_loss(x, y), sk.sinkhorn_loss(x, y, **uniform))


def test_zero_weight_equals_dropping_the_point():
    # Zero weights are how padded batches are written. The L-step algorithm starts from
    # b^0 = 1 on every point, so a zero-weight point still enters the first f-update of the
    # self-term W(x, x); placed far from the data, as padding is, its exp(-C / eps) underflows
    # there and the point is absent.
    x, y, a, b = random_problem(8, 6, 2)
    a = torch.cat([a, torch.zeros(2, dtype=a.dtype)])
    # Far from the data, and fixed: a random draw may land near it (1 in 60 did).
    far = torch.tensor([[100.0, -80.0], [-90.0, 120.0]], dtype=x.dtype)
    x_padded = torch.cat([x, far]).requires_grad_()
    kw = dict(eps=0.2, iters=12, y_weights=b)
    padded = sk.sinkhorn_loss(x_padded, y, x_weights=a, **kw)
    x_dropped = x.clone().requires_grad_()
    dropped = sk.sinkhorn_loss(x_dropped, y, x_weights=a[:8], **kw)
    torch.testing.assert_close(padded, dropped, rtol=1e-12, atol=1e-13)
    padded.backward()
    dropped.backward()
    torch.testing.assert_close(x_padded.grad[:8], x_dropped.grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(x_padded.grad[8:], torch.zeros(2, 2, dtype=x.dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_the_float64_reference_to_their_precision(dtype):
    x, y, _, _ = random_problem(20, 20, 2, dtype=torch.float32, weighted=False)
    x, y = x.to(dtype).requires_grad_(), y.to(dtype)
    got = sk.sinkhorn_loss(x, y, eps=0.5, iters=10)
    (grad,) = torch.autograd.grad(got, x)
    assert got.dtype == dtype and grad.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    expected = sk.reference.sinkhorn_loss(x64, y.double(), eps=0.5, iters=10)
    (expected_grad,) = torch.autograd.grad(expected, x64)
    # The only rounding beyond float32's is that of the result to dtype.
    tol = dict(rtol=torch.finfo(dtype).eps, atol=1e-5)
    torch.testing.assert_close(got.double(), expected, **tol)
    torch.testing.assert_close(grad.double(), expected_grad, **tol)


def test_non_contiguous_inputs_give_the_contiguous_result():
    x, y, a, b = random_problem(10, 12, 3, batch=2)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    y_strided = torch.stack([y, y], 2)[:, :, 0]
    a_strided = torch.stack([a, a], -1)[..., 0]
    assert not (xt.is_contiguous() or y_strided.is_contiguous() or a_strided.is_contiguous())
    kw = dict(eps=0.4, iters=6)
    torch.testing.assert_close(
        sk.sinkhorn_loss(xt, y_strided, x_weights=a_strided, y_weights=b, **kw),
        sk.sinkhorn_loss(x, y, x_weights=a, y_weights=b, **kw), rtol=0, atol=0)


def test_loss_of_a_cloud_with_itself_is_zero():
    x, _, a, _ = random_problem(15, 1, 3)
    torch.testing.assert_close(sk.sinkhorn_loss(x, x, x_weights=a, y_weights=a),
                               torch.zeros((), dtype=x.dtype), rtol=0, atol=1e-13)


def test_sinkhorn_loss_module_reductions():
    x, y, a, b = random_problem(10, 7, 2, batch=3)
    per_problem = sk.sinkhorn_loss(x, y, eps=0.3, iters=5, x_weights=a, y_weights=b)
    for reduction, expected in [("none", per_problem), ("sum", per_problem.sum()),
                                ("mean", per_problem.mean())]:
        crit = sk.SinkhornLoss(eps=0.3, iters=5, reduction=reduction)
        torch.testing.assert_close(crit(x, y, a, b), expected)
    assert "eps=0.3" in repr(sk.SinkhornLoss(eps=0.3))


def test_nan_in_points_gives_nan_not_a_finite_loss():
    x, y, _, _ = random_problem(10, 10, 2, weighted=False)
    x[3, 1] = float("nan")
    assert torch.isnan(sk.sinkhorn_loss(x, y, eps=0.5, iters=5))
    assert torch.isnan(sk.sinkhorn_cost(y, x, eps=0.5, iters=5))
