"""Independent oracles: the two limits of Theorem 1 (exact OT through scipy, MMD_{-c}),
POT's Sinkhorn at convergence, and finite results at the paper's smallest eps."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import sinkhorn_ext as sk
from sinkhorn_ext.reference import cost_matrix
from testing import COSTS, random_problem


def _assignment_cost(x, y, cost):
    C = cost_matrix(x, y, cost).numpy()
    rows, cols = linear_sum_assignment(C)
    return C[rows, cols].mean()


@pytest.mark.parametrize("cost", COSTS)
def test_small_eps_tends_to_twice_the_exact_ot_cost(cost):
    x, y, _, _ = random_problem(7, 7, 2, weighted=False, seed=3)
    exact = 2 * _assignment_cost(x, y, cost)
    errors = [abs(sk.sinkhorn_loss(x, y, eps=eps, iters=3000, cost=cost).item() - exact)
              for eps in (0.1, 0.02, 0.004)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3 * exact


@pytest.mark.parametrize("cost", COSTS)
def test_large_eps_tends_to_mmd_with_kernel_minus_cost(cost):
    x, y, a, b = random_problem(12, 9, 3)
    mmd = (2 * a @ cost_matrix(x, y, cost) @ b - a @ cost_matrix(x, x, cost) @ a
           - b @ cost_matrix(y, y, cost) @ b)
    loss = sk.sinkhorn_loss(x, y, eps=1e6, iters=5, cost=cost, x_weights=a, y_weights=b)
    torch.testing.assert_close(loss, mmd, rtol=1e-5, atol=0)


@pytest.mark.parametrize("cost", COSTS)
def test_converged_cost_equals_pot_sinkhorn(cost):
    ot = pytest.importorskip("ot")
    x, y, a, b = random_problem(25, 18, 2)
    C = cost_matrix(x, y, cost).numpy()
    eps = 0.5
    expected = ot.sinkhorn2(a.numpy(), b.numpy(), C, eps, method="sinkhorn_log",
                            numItermax=10000, stopThr=1e-14)
    got = sk.sinkhorn_cost(x, y, eps=eps, iters=2000, cost=cost, x_weights=a, y_weights=b)
    np.testing.assert_allclose(got.item(), float(expected), rtol=1e-9)


def _iris_like(seed=0):
    # Three clusters with coordinates of a few units, like Iris after PCA (paper Section 4.1).
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-2.7, 0.3, 0.0], [0.3, -0.6, 0.1], [1.9, 0.5, -0.1]])
    return torch.cat([c + 0.4 * torch.randn(50, 3, generator=gen) for c in centres])


def test_float32_at_eps_1e_3_is_finite_where_the_scaling_form_underflows():
    data = _iris_like()
    model = (data[torch.randperm(150)[:100]] + 0.3).requires_grad_()
    C = cost_matrix(model.detach(), data)
    assert (C / 1e-3).max() > 1e3  # exp(-C/eps) underflows to 0 in float32
    loss = sk.sinkhorn_loss(model, data, eps=1e-3, iters=20)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(model.grad).all() and model.grad.abs().sum() > 0
    expected = sk.sinkhorn_loss(model.detach().double(), data.double(), eps=1e-3, iters=20)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-3, atol=0)
