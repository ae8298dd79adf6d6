"""backend="online": the same values and gradients as the tensorized backend and the reference,
to rounding, with memory linear in m + n; and the rule of backend="auto"."""

import subprocess
import sys
import textwrap

import pytest
import torch

import sinkhorn_ext as sk
import sinkhorn_ext.api
from testing import COSTS, DTYPES, TOLERANCE, random_problem


def _all_grads(fn, x, y, a, b, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, y, a, b)]
    value = fn(leaves[0], leaves[1], x_weights=leaves[2], y_weights=leaves[3], **kw)
    return (value, *torch.autograd.grad(value.sum(), leaves))


# 600 and 1030 points cross the online passes' pieces of 512; eps 0.02 runs the tensorized
# backend in the log domain, 1.0 in the scaling form.
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("eps", [0.02, 1.0])
@pytest.mark.parametrize("m,n,d,batch", [(1, 1, 1, None), (600, 1030, 2, None), (37, 13, 5, 3)])
def test_online_equals_tensorized_values_and_gradients(cost, eps, m, n, d, batch):
    x, y, a, b = random_problem(m, n, d, batch=batch)
    kw = dict(eps=eps, iters=6, cost=cost)
    online = _all_grads(sk.sinkhorn_loss, x, y, a, b, backend="online", **kw)
    tensorized = _all_grads(sk.sinkhorn_loss, x, y, a, b, backend="tensorized", **kw)
    torch.testing.assert_close(online[0], tensorized[0], rtol=1e-11, atol=0)
    # Gradients relative to the largest of all four (with m = 1, W does not depend on alpha
    # and its gradient is 0 up to rounding).
    scale = max(g.abs().max().item() for g in tensorized[1:])
    for got, expected in zip(online[1:], tensorized[1:]):
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cost", COSTS)
def test_online_cost_equals_reference(dtype, cost):
    x, y, a, b = random_problem(45, 31, 3, dtype=dtype)
    kw = dict(eps=0.3, iters=9, cost=cost)
    got = _all_grads(sk.sinkhorn_cost, x, y, a, b, backend="online", **kw)
    expected = _all_grads(sk.reference.sinkhorn_cost, x.double(), y.double(), a.double(),
                          b.double(), **kw)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, **TOLERANCE[dtype])


def test_online_zero_weight_point_of_x_is_absent_from_the_cost():
    # Anywhere, even among the data: after b^0 = 1 a point of x with alpha_i = 0 has a_i = 0.
    x, y, a, b = random_problem(8, 6, 2)
    a = torch.cat([a, torch.zeros(2, dtype=a.dtype)])
    x_padded = torch.cat([x, torch.tensor([[-0.46, -0.09], [0.3, 0.2]], dtype=x.dtype)])
    padded = _all_grads(sk.sinkhorn_cost, x_padded, y, a, b, eps=0.2, iters=12, backend="online")
    dropped = _all_grads(sk.sinkhorn_cost, x, y, a[:8], b, eps=0.2, iters=12, backend="online")
    torch.testing.assert_close(padded[0], dropped[0], rtol=1e-13, atol=0)
    torch.testing.assert_close(padded[1][:8], dropped[1], rtol=1e-12, atol=1e-14)
    assert torch.equal(padded[1][8:], torch.zeros(2, 2, dtype=x.dtype))


def test_online_nan_point_gives_nan():
    x, y, _, _ = random_problem(10, 7, 2)
    x[3, 0] = float("nan")
    assert torch.isnan(sk.sinkhorn_loss(x, y, backend="online"))


def test_online_results_are_bitwise_repeatable():
    x, y, a, b = random_problem(300, 700, 3, dtype=torch.float32)
    first = _all_grads(sk.sinkhorn_loss, x, y, a, b, eps=0.1, iters=4, backend="online")
    second = _all_grads(sk.sinkhorn_loss, x, y, a, b, eps=0.1, iters=4, backend="online")
    assert all(torch.equal(u, v) for u, v in zip(first, second))


def test_auto_is_tensorized_until_its_arrays_pass_the_limit(monkeypatch):
    x, y, a, b = random_problem(20, 30, 2)
    assert sk.api.resolve_backend("auto", x, y, loss=True) == "tensorized"
    # The loss: 4 arrays of max(m, n)^2 float64 = 28800 bytes; the cost: of m n, 19200 bytes.
    monkeypatch.setattr(sinkhorn_ext.api, "TENSORIZED_MAX_BYTES", 28800)
    assert sk.api.resolve_backend("auto", x, y, loss=True) == "tensorized"
    assert sk.api.resolve_backend("auto", x[None], y[None], loss=True) == "tensorized"
    assert sk.api.resolve_backend("auto", x.expand(2, -1, -1), y.expand(2, -1, -1),
                                  loss=True) == "online"  # twice the arrays
    monkeypatch.setattr(sinkhorn_ext.api, "TENSORIZED_MAX_BYTES", 28799)
    assert sk.api.resolve_backend("auto", x, y, loss=True) == "online"
    assert sk.api.resolve_backend("auto", x, y, loss=False) == "tensorized"
    monkeypatch.setattr(sinkhorn_ext.api, "TENSORIZED_MAX_BYTES", 19199)
    assert sk.api.resolve_backend("auto", x, y, loss=False) == "online"
    assert sk.api.resolve_backend("tensorized", x, y, loss=True) == "tensorized"
    online = sk.sinkhorn_loss(x, y, x_weights=a, y_weights=b, backend="online")
    torch.testing.assert_close(sk.sinkhorn_loss(x, y, x_weights=a, y_weights=b), online,
                               rtol=0, atol=0)


def test_unknown_backend_at_the_op():
    x, y, a, b = random_problem(5, 4, 2, batch=1)
    with pytest.raises(ValueError, match=r'backend must be "tensorized" or "online", got "keops"'):
        torch.ops.sinkhorn_ext.sinkhorn_cost(x, y, a, b, 0.1, 3, "sqeuclidean", "keops")


def test_opcheck_online_ops():
    x, y, a, b = random_problem(6, 5, 2, batch=2)
    args = [t.requires_grad_() for t in (x, y, a, b)]
    torch.library.opcheck(torch.ops.sinkhorn_ext.sinkhorn_loss.default,
                          (*args, 0.5, 4, "sqeuclidean", "online"))
    torch.library.opcheck(torch.ops.sinkhorn_ext.sinkhorn_cost.default,
                          (*args, 0.5, 4, "euclidean", "online"))


# m = n = 16384 in float32: one m x n array is 1 GiB, the tensorized backend holds three.
_PEAK_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, torch, sinkhorn_ext as sk
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16384, 3, generator=gen).requires_grad_()
    y = torch.rand(16384, 3, generator=gen)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sk.sinkhorn_cost(x, y, eps=0.1, iters=2, backend="online").backward()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024)
""")


def test_online_peak_memory_is_linear_at_a_size_where_a_matrix_is_a_gibibyte():
    result = subprocess.run([sys.executable, "-c", _PEAK_MEMORY_SCRIPT], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    extra_mb = float(result.stdout.strip())
    assert extra_mb < 100, f"online fwd + bwd took {extra_mb:.0f} MB extra at m = n = 16384"
