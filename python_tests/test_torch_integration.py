"""The ops are proper torch ops: opcheck (schema, fake kernels, autograd registration,
AOT dispatch) and torch.compile(fullgraph=True) of the public functions."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import sinkhorn_ext as sk
from testing import random_problem

ops = torch.ops.sinkhorn_ext
OPS = [ops.sinkhorn_cost, ops.sinkhorn_loss]

# d = 2: the costs are built by row kernels; d = 16: by BLAS, and the CPU keeps them for the
# backward.
DIMS = [2, 16]
# What a caller, or autograd, asks of the inputs (x, y, x_weights, y_weights).
MASKS = [[False] * 4, [True] * 4, [True, False, True, False], [False, True, False, False]]


def _non_contiguous(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() == 3 else \
        torch.stack([t, t], -1)[..., 0]


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(op, cost, requires_grad, d):
    x, y, a, b = random_problem(6, 5, d, batch=2)
    args = [t.requires_grad_(requires_grad) for t in (x, y, a, b)]
    torch.library.opcheck(op.default, (*args, 0.5, 4, cost))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
@pytest.mark.parametrize("mask", MASKS[1:])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("contiguous", [True, False])
def test_opcheck_with_gradients_asked_for(op, mask, d, contiguous):
    x, y, a, b = random_problem(6, 5, d, batch=2)
    if not contiguous:
        x, b = _non_contiguous(x), _non_contiguous(b)
        assert not (x.is_contiguous() or b.is_contiguous())
    torch.library.opcheck(op.default, (x, y, a, b, 0.5, 4, "sqeuclidean", "tensorized", mask))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
@pytest.mark.parametrize("mask", MASKS)
def test_op_returns_the_gradients_that_grad_mask_asks_for_equal_to_autograds(op, mask):
    x, y, a, b = random_problem(7, 5, 3, batch=2)
    leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
    value, *grads = op(x, y, a, b, 0.5, 6, "euclidean", "tensorized", mask)
    expected = torch.autograd.grad(op(*leaves, 0.5, 6, "euclidean")[0].sum(), leaves)
    for wanted, grad, reference in zip(mask, grads, expected):
        if wanted:
            torch.testing.assert_close(grad, reference, rtol=1e-13, atol=1e-15)
        else:
            assert grad.shape == (0,)
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(t) for t in (x, y, a, b)], 0.5, 6, "euclidean",
                  "tensorized", mask)
    assert [t.shape for t in fake] == [value.shape, *(t.shape for t in grads)]


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
@pytest.mark.parametrize("weighted", [False, True])
def test_op_takes_a_cloud_as_a_batch_of_one_and_none_weights_as_uniform(op, weighted):
    x, y, a, b = random_problem(7, 5, 3, weighted=weighted)
    outputs = op(x, y, a, b, 0.5, 6, "sqeuclidean", "tensorized", [True] * 4)
    uniform = [torch.full((1, count), 1 / count, dtype=x.dtype) for count in (7, 5)]
    weights = uniform if a is None else [a[None], b[None]]
    batched = op(x[None], y[None], *weights, 0.5, 6, "sqeuclidean", "tensorized", [True] * 4)
    for output, expected in zip(outputs, batched):
        assert output.shape == expected.shape[1:]
        assert torch.equal(output, expected[0])
    with FakeTensorMode() as mode:
        fake = op(*[t if t is None else mode.from_tensor(t) for t in (x, y, a, b)], 0.5, 6,
                  "sqeuclidean", "tensorized", [True] * 4)
    assert [t.shape for t in fake] == [t.shape for t in outputs]
    # Through autograd, with an incoming gradient: the given inputs get theirs, scaled.
    leaves = [t if t is None else t.clone().requires_grad_() for t in (x, y, a, b)]
    value = op(*leaves, 0.5, 6, "sqeuclidean")[0]
    given = [(t, grad) for t, grad in zip(leaves, outputs[1:]) if t is not None]
    grads = torch.autograd.grad(value * 3, [t for t, _ in given])
    for grad, (_, expected) in zip(grads, given):
        assert torch.equal(grad, expected * 3)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("weighted", [False, True])
def test_opcheck_unbatched(op, mask, weighted):
    x, y, a, b = random_problem(6, 5, 2, weighted=weighted)
    torch.library.opcheck(op.default, (x, y, a, b, 0.5, 4, "sqeuclidean", "tensorized", mask))
    leaves = [t if t is None else t.requires_grad_() for t in (x, y, a, b)]
    torch.library.opcheck(op.default, (*leaves, 0.5, 4, "euclidean"))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_gradients_are_computed_only_where_autograd_will_need_them(op):
    x, y, a, b = random_problem(7, 5, 3, batch=2)
    x.requires_grad_()
    _, *grads = op(x, y, a, b, 0.5, 6, "sqeuclidean")
    assert [t.numel() > 0 for t in grads] == [True, False, False, False]
    with torch.no_grad():
        _, *grads = op(x, y, a, b, 0.5, 6, "sqeuclidean")
    assert [t.numel() for t in grads] == [0] * 4


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


def test_incoming_gradient_scales_each_problems_gradient():
    x, y, a, b = random_problem(7, 5, 3, batch=3)
    for op in OPS:
        leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
        weights = torch.tensor([0.5, -2.0, 3.0], dtype=x.dtype)
        value = op(*leaves, 0.5, 6, "sqeuclidean")[0]
        grads = torch.autograd.grad(value, leaves, weights)
        _, *unit = op(x, y, a, b, 0.5, 6, "sqeuclidean", "tensorized", [True] * 4)
        for grad, one in zip(grads, unit):
            torch.testing.assert_close(grad, one * weights.view(-1, *[1] * (one.dim() - 1)),
                                       rtol=0, atol=0)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_through_activation_checkpointing_equals_the_plain_one(use_reentrant):
    x, y, _, _ = random_problem(6, 5, 2, weighted=False)
    x.requires_grad_()
    layer = torch.nn.Linear(2, 2).to(x.dtype)

    def loss(points):
        return sk.sinkhorn_loss(layer(points), y, eps=0.5, iters=5)

    def weight_gradient(value):
        layer.weight.grad = None
        value.backward()  # the reentrant checkpoint supports backward(), not autograd.grad
        return layer.weight.grad

    expected = weight_gradient(loss(x))
    checkpointed = torch.utils.checkpoint.checkpoint(loss, x, use_reentrant=use_reentrant)
    torch.testing.assert_close(weight_gradient(checkpointed), expected, rtol=0, atol=0)


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
