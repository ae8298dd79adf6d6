"""The ops are proper torch ops: opcheck (schema, fake kernels, autograd registration,
AOT dispatch) and torch.compile(fullgraph=True) of the public functions."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import sinkhorn_ext as sk
from sinkhorn_ext._ops import KEPT_COSTS_MAX, KEPT_COSTS_MIN_DIM
from testing import random_problem

ops = torch.ops.sinkhorn_ext


# d = 2: the costs are built again in the backward; d = 16: the CPU forward keeps them for it.
DIMS = [2, KEPT_COSTS_MIN_DIM]


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward_op(cost, requires_grad, d):
    x, y, a, b = random_problem(6, 5, d, batch=2)
    args = [t.requires_grad_(requires_grad) for t in (x, y, a, b)]
    torch.library.opcheck(ops.sinkhorn_cost.default, (*args, 0.5, 4, cost))


def _non_contiguous(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() == 3 else \
        torch.stack([t, t], -1)[..., 0]


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("contiguous", [True, False])
def test_opcheck_backward_op(contiguous, d):
    x, y, a, b = random_problem(6, 5, d, batch=2)
    if not contiguous:
        x, a = _non_contiguous(x), _non_contiguous(a)
        assert not (x.is_contiguous() or a.is_contiguous())
    _, u, v, kept_costs = ops.sinkhorn_cost(x, y, a, b, 0.5, 4, "sqeuclidean")
    torch.library.opcheck(ops.sinkhorn_cost_backward.default,
                          (torch.ones(2, dtype=x.dtype), x, y, a, b, u, v, kept_costs, 0.5,
                           "sqeuclidean"))


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_loss_op(cost, requires_grad, d):
    x, y, a, b = random_problem(6, 5, d, batch=2)
    args = [t.requires_grad_(requires_grad) for t in (x, y, a, b)]
    torch.library.opcheck(ops.sinkhorn_loss.default, (*args, 0.5, 4, cost))


@pytest.mark.parametrize("mask", [[True] * 4, [True, False, True, False],
                                  [False, True, False, False]])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("contiguous", [True, False])
def test_opcheck_loss_backward_op(contiguous, mask, d):
    x, y, a, b = random_problem(6, 5, d, batch=2)
    if not contiguous:
        x, b = _non_contiguous(x), _non_contiguous(b)
    _, *saved = ops.sinkhorn_loss(x, y, a, b, 0.5, 4, "sqeuclidean")  # histories, kept costs
    torch.library.opcheck(ops.sinkhorn_loss_backward.default,
                          (torch.ones(2, dtype=x.dtype), x, y, a, b, *saved, mask, 0.5,
                           "sqeuclidean"))


@pytest.mark.parametrize("shape", [(1, 7, 5, KEPT_COSTS_MIN_DIM - 1), (1, 7, 5, KEPT_COSTS_MIN_DIM),
                                   (1, 1024, 1024, 16), (1, 1024, 1025, 16), (2, 724, 724, 16)])
def test_fake_kernels_predict_which_costs_are_kept(shape):
    batch, m, n, d = shape
    x, y, a, b = random_problem(m, n, d, batch=batch)
    args = (x, y, a, b, 0.5, 1, "sqeuclidean")
    with torch.no_grad():
        real = [ops.sinkhorn_cost(*args)[3], ops.sinkhorn_loss(*args)[7]]
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(t) for t in args[:4]] + list(args[4:])
        fake = [ops.sinkhorn_cost(*fake_args)[3], ops.sinkhorn_loss(*fake_args)[7]]
    assert [t.shape for t in fake] == [t.shape for t in real]
    expected = d >= KEPT_COSTS_MIN_DIM and batch * m * n <= KEPT_COSTS_MAX
    assert real[0].numel() == (batch * m * n if expected else 0)
    torch.testing.assert_close(real[0], sk.reference.cost_matrix(x, y).flatten()[:real[0].numel()])


@pytest.mark.parametrize("op", ["sinkhorn_cost", "sinkhorn_loss"])
def test_gradients_from_the_kept_costs_equal_those_from_costs_built_again(op):
    x, y, a, b = random_problem(9, 7, 20, batch=2)
    outputs = getattr(ops, op)(x, y, a, b, 0.5, 6, "sqeuclidean")
    assert outputs[-1].numel() > 0
    rebuilt = [*outputs[1:-1], x.new_empty(0)]
    backward = getattr(ops, op + "_backward")
    mask = [[True] * 4] if op == "sinkhorn_loss" else []
    args = lambda saved: (torch.ones(2, dtype=x.dtype), x, y, a, b, *saved, *mask, 0.5,
                          "sqeuclidean")
    for kept, again in zip(backward(*args(outputs[1:])), backward(*args(rebuilt))):
        torch.testing.assert_close(kept, again, rtol=1e-13, atol=1e-15)


def test_loss_op_equals_its_three_cost_terms():
    x, y, a, b = random_problem(7, 5, 3, batch=2)
    x.requires_grad_()
    kw = (0.5, 6, "euclidean")
    fused = ops.sinkhorn_loss(x, y, a, b, *kw)[0]
    terms = (2 * ops.sinkhorn_cost(x, y, a, b, *kw)[0] - ops.sinkhorn_cost(x, x, a, a, *kw)[0]
             - ops.sinkhorn_cost(y, y, b, b, *kw)[0])
    torch.testing.assert_close(fused, terms, rtol=1e-14, atol=1e-15)
    grad_fused, = torch.autograd.grad(fused.sum(), x)
    grad_terms, = torch.autograd.grad(terms.sum(), x)
    torch.testing.assert_close(grad_fused, grad_terms, rtol=1e-13, atol=1e-15)


def test_loss_gradient_of_x_alone_equals_that_of_the_full_backward():
    # With only x asking, W(y, y) is not replayed; what x gets must not change.
    x, y, a, b = random_problem(9, 7, 2)
    kw = dict(eps=0.4, iters=5, x_weights=a, y_weights=b)
    x_alone = x.clone().requires_grad_()
    (grad_alone,) = torch.autograd.grad(sk.sinkhorn_loss(x_alone, y, **kw), x_alone)
    leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
    full = sk.sinkhorn_loss(leaves[0], leaves[1], eps=0.4, iters=5, x_weights=leaves[2],
                            y_weights=leaves[3])
    grads = torch.autograd.grad(full, leaves)
    torch.testing.assert_close(grad_alone, grads[0], rtol=0, atol=0)
    _, *histories = ops.sinkhorn_loss(x[None], y[None], a[None], b[None], 0.4, 5, "sqeuclidean")
    masked = ops.sinkhorn_loss_backward(torch.ones(1, dtype=x.dtype), x[None], y[None], a[None],
                                        b[None], *histories, [True, False, True, False], 0.4,
                                        "sqeuclidean")
    assert not masked[1].any() and not masked[3].any()


def test_opcheck_forward_op_non_contiguous():
    x, y, a, b = random_problem(6, 5, 3, batch=2)
    args = [_non_contiguous(t).requires_grad_() for t in (x, y, a, b)]
    torch.library.opcheck(ops.sinkhorn_cost.default, (*args, 0.5, 4, "euclidean"))


@pytest.mark.parametrize("contiguous", [True, False])
def test_compiled_loss_and_gradient_match_eager(contiguous):
    torch._dynamo.reset()
    x, y, a, b = random_problem(30, 20, 2, dtype=torch.float32)
    if not contiguous:
        x = torch.randn(2, 30).t()  # strides (1, 30)

    def step(x, y, a, b):
        return sk.sinkhorn_loss(x, y, eps=0.3, iters=10, x_weights=a, y_weights=b) * 2.0

    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        xl = x.clone().requires_grad_()
        loss = fn(xl, y, a, b)
        loss.backward()
        results.append((loss.detach(), xl.grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_compiled_module_with_batched_input():
    torch._dynamo.reset()
    x, y, _, _ = random_problem(12, 9, 3, batch=3, dtype=torch.float32, weighted=False)
    crit = sk.SinkhornLoss(eps=0.5, iters=5, reduction="sum")
    torch.testing.assert_close(torch.compile(crit, fullgraph=True)(x, y), crit(x, y))
