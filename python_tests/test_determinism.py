"""CPU results are bitwise identical from call to call, and independent of the thread count
to rounding."""

import pytest
import torch

import sinkhorn_ext as sk
from testing import random_problem


def _loss_and_grads(x, y, a, b, backend="auto"):
    leaves = [t.clone().requires_grad_() for t in (x, y, a, b)]
    loss = sk.sinkhorn_loss(leaves[0], leaves[1], eps=0.2, iters=15, x_weights=leaves[2],
                            y_weights=leaves[3], backend=backend)
    return (loss.detach(), *torch.autograd.grad(loss.sum(), leaves))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_identical_from_call_to_call(dtype):
    x, y, a, b = random_problem(300, 257, 3, batch=2, dtype=dtype)
    first = _loss_and_grads(x, y, a, b)
    for _ in range(3):
        for r, s in zip(first, _loss_and_grads(x, y, a, b)):
            assert torch.equal(r, s)


@pytest.mark.parametrize("backend", ["tensorized", "online"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scratch_reused_from_another_problem_changes_nothing(dtype, backend):
    # The CPU kernels' large scratch is kept between calls (csrc/cpu/scratch.h): a call of the
    # same sizes in between leaves its own values there, which no result may depend on.
    problem = random_problem(300, 257, 3, batch=2, dtype=dtype)
    first = _loss_and_grads(*problem, backend=backend)
    other = random_problem(300, 257, 3, batch=2, dtype=dtype, seed=7)
    _loss_and_grads(*other, backend=backend)
    for r, s in zip(first, _loss_and_grads(*problem, backend=backend)):
        assert torch.equal(r, s)


def test_thread_count_changes_nothing_but_rounding():
    x, y, a, b = random_problem(300, 257, 3, batch=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = _loss_and_grads(x, y, a, b)
        torch.set_num_threads(max(2, threads))
        parallel = _loss_and_grads(x, y, a, b)
    finally:
        torch.set_num_threads(threads)
    for r, s in zip(serial, parallel):
        torch.testing.assert_close(r, s, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("wanted", ["x", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_loss_terms_side_by_side_are_bitwise_independent_of_thread_count(dtype, wanted):
    # m n = 40 000, between 2^15 and 2^16: each of the loss's three problems runs on one thread
    # (the third on the first thread free), so the thread count leaves every bit as it is;
    # split over two threads, a problem's column sums would be summed by parts.
    x, y, a, b = random_problem(200, 200, 2, dtype=dtype)
    x, y = x.sigmoid(), y.sigmoid()  # in the unit square: max C / eps <= 2, the scaling form
    inputs = [x, y, a, b] if wanted == "all" else [x]

    def loss_and_grads():
        leaves = [t.clone().requires_grad_() for t in inputs]
        x_, y_, a_, b_ = leaves + [x, y, a, b][len(leaves):]
        loss = sk.sinkhorn_loss(x_, y_, eps=1.0, iters=20, x_weights=a_, y_weights=b_,
                                backend="tensorized")
        return (loss.detach(), *torch.autograd.grad(loss, leaves))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = loss_and_grads()
        torch.set_num_threads(max(2, threads))
        parallel = loss_and_grads()
    finally:
        torch.set_num_threads(threads)
    for r, s in zip(serial, parallel):
        assert torch.equal(r, s)
