"""The gradient of the fused op is the exact gradient of the L-step algorithm: gradcheck in
float64 against finite differences, and equal to autograd through the reference's loop."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import sinkhorn_ext as sk
from testing import COSTS, random_problem


def _normalised(w):
    # gradcheck perturbs each weight alone, which leaves the probability simplex; the
    # gradient with respect to the raw weights checks ours through the chain rule.
    return w / w.sum(-1, keepdim=True)


def _separated_problem(m, n, d, batch=None, seed=0):
    # The euclidean cost is not differentiable where two points coincide; finite differences
    # need clouds without coincident pairs (W(x, x) has them, and gets the gradient 0 there).
    x, y, a, b = random_problem(m, n, d, batch=batch, seed=seed)
    return x, y + 0.05, a, b


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("iters", [1, 3, 10])
def test_gradcheck_cost_all_inputs(cost, iters):
    x, y, a, b = _separated_problem(6, 5, 2)
    inputs = [t.requires_grad_() for t in (x, y, a, b)]

    def f(x, y, a, b):
        return sk.sinkhorn_cost(x, y, eps=0.4, iters=iters, cost=cost,
                                x_weights=_normalised(a), y_weights=_normalised(b))

    assert torch.autograd.gradcheck(f, inputs)


# d = 20: C is a BLAS product, and the CPU backward reads the forward's kept C.
@pytest.mark.parametrize("d", [3, 20])
@pytest.mark.parametrize("cost", COSTS)
def test_gradcheck_loss_batched(cost, d):
    x, y, a, b = _separated_problem(5, 4, d, batch=2)
    inputs = [t.requires_grad_() for t in (x, y, a, b)]

    def f(x, y, a, b):
        return sk.sinkhorn_loss(x, y, eps=0.7, iters=4, cost=cost,
                                x_weights=_normalised(a), y_weights=_normalised(b))

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("eps,iters", [(0.05, 40), (1.0, 20), (30.0, 5)])
def test_loss_gradients_equal_autograd_through_the_reference(cost, eps, iters):
    x, y, a, b = random_problem(31, 26, 3)
    grads = []
    for impl in (sk, sk.reference):
        leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
        loss = impl.sinkhorn_loss(leaves[0], leaves[1], eps=eps, iters=iters, cost=cost,
                                  x_weights=leaves[2], y_weights=leaves[3])
        grads.append(torch.autograd.grad(3.0 * loss, leaves))
    for fused, ref in zip(*grads):
        scale = ref.abs().max()
        torch.testing.assert_close(fused, ref, rtol=1e-9, atol=1e-11 * max(1.0, scale.item()))


def test_batched_gradient_scales_with_each_problems_incoming_gradient():
    x, y, a, b = random_problem(7, 9, 2, batch=3)
    x.requires_grad_()
    loss = sk.sinkhorn_loss(x, y, eps=0.5, iters=6, x_weights=a, y_weights=b)
    weights = torch.tensor([1.0, -2.0, 0.0], dtype=x.dtype)
    (grad,) = torch.autograd.grad((loss * weights).sum(), x)
    for k in range(3):
        xk = x[k].detach().clone().requires_grad_()
        lk = sk.sinkhorn_loss(xk, y[k], eps=0.5, iters=6, x_weights=a[k], y_weights=b[k])
        (gk,) = torch.autograd.grad(lk * weights[k], xk)
        torch.testing.assert_close(grad[k], gk, rtol=1e-12, atol=1e-14)


def test_euclidean_gradient_with_coincident_pairs_equals_the_reference():
    # x_0 = y_0 and x_2 = y_2 coincide: those pairs contribute 0, the others their derivative.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    grads = []
    for impl in (sk, sk.reference):
        xl = x.clone().requires_grad_()
        loss = impl.sinkhorn_loss(xl, y, eps=0.1, iters=5, cost="euclidean")
        grads.append(torch.autograd.grad(loss, xl)[0])
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_gradient_at_a_zero_weight_is_the_directional_derivative():
    # Moving mass onto a point of weight 0 (d = e_k - a keeps a + t d on the simplex): the
    # one-sided difference quotient must match <grad, d>; the reference gives NaN there.
    x, y, a, b = random_problem(6, 5, 2)
    a = torch.cat([a[:5], torch.zeros(1, dtype=a.dtype)])
    a = a / a.sum()
    al = a.clone().requires_grad_()
    kw = dict(eps=0.3, iters=8, y_weights=b)
    (grad,) = torch.autograd.grad(sk.sinkhorn_cost(x, y, x_weights=al, **kw), al)
    assert torch.isfinite(grad).all()
    direction = torch.nn.functional.one_hot(torch.tensor(5), 6).to(a.dtype) - a
    t = 1e-7
    quotient = (sk.sinkhorn_cost(x, y, x_weights=a + t * direction, **kw)
                - sk.sinkhorn_cost(x, y, x_weights=a, **kw)) / t
    torch.testing.assert_close(quotient, grad @ direction, rtol=1e-5, atol=1e-8)


def test_double_backward_raises_instead_of_returning_wrong_numbers():
    x, y, _, _ = random_problem(6, 5, 2, weighted=False)
    x.requires_grad_()
    (grad,) = torch.autograd.grad(sk.sinkhorn_loss(x, y, eps=0.5, iters=4), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"first derivatives only"):
        torch.autograd.grad((grad ** 2).sum(), x)


def test_forward_mode_and_functorch_derivatives_raise_instead_of_returning_wrong_numbers():
    x, y, _, _ = random_problem(6, 5, 2, weighted=False)
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match=r"forward-mode AD .* is not supported"):
            sk.sinkhorn_loss(fwAD.make_dual(x, torch.ones_like(x)), y)
    for transform in (lambda f: torch.func.grad(f)(x),
                      lambda f: torch.func.jvp(f, (x,), (torch.ones_like(x),))):
        with pytest.raises(RuntimeError, match=r"functorch transforms"):
            transform(lambda x: sk.sinkhorn_loss(x, y))


def test_backward_twice_accumulates_with_retain_graph_and_raises_without():
    x, y, _, _ = random_problem(6, 5, 2, weighted=False)
    x.requires_grad_()
    loss = sk.sinkhorn_loss(x, y, eps=0.5, iters=4)
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * once)
    with pytest.raises(RuntimeError, match=r"backward through the graph a second time"):
        loss.backward()


def test_float32_gradients_match_float64():
    x, y, a, b = random_problem(40, 30, 2)
    grads = []
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype).requires_grad_()
        loss = sk.sinkhorn_loss(xd, y.to(dtype), eps=0.1, iters=20, x_weights=a.to(dtype),
                                y_weights=b.to(dtype))
        grads.append(torch.autograd.grad(loss, xd)[0].double())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)
