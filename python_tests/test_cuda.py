"""The CUDA kernels against the CPU kernels.

Covers, on CUDA tensors: values of sinkhorn_cost and sinkhorn_loss and their gradients with
respect to x, y and both weight vectors, equal to the CPU op's on the same inputs, over the
grid of the CPU tests (shapes, eps, L, both costs, random, uniform and zero weights, batches,
float32 and float64) and over sizes that run each CUDA strategy: "resident" (the whole
problem in one block's shared memory) and "tiled" (C and C^T in global memory), with sizes
that are not multiples of the 128-thread tile; and backend="online" (no m x n array) against
the CPU's online backend over the same grid and at d above its chunk of 8 coordinates. Also: a
non-default stream, inputs on a second GPU, torch.library.opcheck and
torch.compile(fullgraph=True) on CUDA, bitwise determinism, a large problem (m = n = 20 000)
and a large online one (m = n = 100 000, whose cost matrix would take 40 GB).

Runs only on a CUDA build of the extension with a GPU; skipped otherwise, with the reason.
"""

from collections import namedtuple

import pytest
import torch

import sinkhorn_ext as sk
from testing import COSTS, DTYPES, cuda_skip_reason, random_problem

_SKIP_REASON = cuda_skip_reason()
pytestmark = pytest.mark.skipif(_SKIP_REASON is not None, reason=str(_SKIP_REASON))

ops = torch.ops.sinkhorn_ext

# CUDA against CPU on the same inputs: rounding only (reduction order, exp, FMA contraction),
# relative to the largest entry of each result, for (values, gradients). The float32 gradients
# get more room: those with respect to the points are sums of terms that cancel, and on CPU a
# 1-ulp perturbation of the inputs alone moves them by up to 1.5e-4 of their largest entry
# (sqeuclidean, eps <= 0.1, a few hundred points).
RTOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-3)}

Case = namedtuple("Case", "name m n d batch eps iters weights")
# weights: "random" probability vectors, "uniform" (None: the default) or "zeros" (random,
# with some entries 0). Which strategy a size runs is for W(x, y); see _strategy.
CASES = [
    Case("1x1_d1", 1, 1, 1, None, 0.5, 10, "random"),
    Case("1x9_d2", 1, 9, 2, None, 0.5, 10, "random"),
    Case("16x16_d2", 16, 16, 2, None, 0.5, 10, "random"),
    Case("33x65_d5", 33, 65, 5, None, 0.5, 10, "random"),
    Case("40x12_d64", 40, 12, 64, None, 0.5, 10, "random"),
    Case("31x26_eps0.05_L40", 31, 26, 3, None, 0.05, 40, "random"),
    Case("31x26_eps1_L20", 31, 26, 3, None, 1.0, 20, "random"),
    Case("31x26_eps30_L5", 31, 26, 3, None, 30.0, 5, "random"),
    Case("9x6_default_weights", 9, 6, 2, None, 0.5, 10, "uniform"),
    Case("batch4_11x14", 11, 14, 3, 4, 0.3, 8, "random"),
    Case("batch2_20x15_zero_weights", 20, 15, 2, 2, 0.2, 12, "zeros"),
    Case("resident_100x100", 100, 100, 3, None, 0.1, 20, "random"),
    Case("resident_batch3_100x100_zero_weights", 100, 100, 3, 3, 0.1, 20, "zeros"),
    # Resident in float32 where a block may have 227 KiB (H100) or 163 KiB (A100), tiled in
    # float64 everywhere.
    Case("batch2_200x200", 200, 200, 3, 2, 0.1, 20, "random"),
    Case("tiled_300x500", 300, 500, 3, None, 0.1, 20, "random"),
    Case("tiled_batch2_257x300_zero_weights", 257, 300, 3, 2, 0.2, 15, "zeros"),
]


def _problem(case, dtype, seed=0):
    x, y, a, b = random_problem(case.m, case.n, case.d, batch=case.batch, dtype=dtype,
                                weighted=case.weights != "uniform", seed=seed)
    if case.weights == "zeros":  # zero weights are how padded batches are written
        a, b = a.clone(), b.clone()
        a[..., 1::5] = 0
        b[..., 2::7] = 0
        a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    return x, y, a, b


def _evaluate(fn, problem, device, sleep_cycles=0, **options):
    """fn(x, y, x_weights=a, y_weights=b, **options) on fresh copies of problem = (x, y, a, b)
    on device: (value, gradients with respect to x, y and the weights that are not None),
    for an upstream gradient that differs from problem to problem. With sleep_cycles, the
    current stream is kept busy before the inputs and the upstream gradient are written, so
    that kernels put on another stream would read them before they exist (NaN, garbage)."""
    if sleep_cycles:
        torch.cuda._sleep(sleep_cycles)
    leaves = [None if t is None else t.detach().to(device, copy=True).requires_grad_()
              for t in problem]
    x, y, a, b = leaves
    value = fn(x, y, x_weights=a, y_weights=b, **options)
    upstream = torch.linspace(0.5, 2.0, value.numel(), dtype=value.dtype,
                              device=value.device).reshape(value.shape)
    if sleep_cycles:  # NaN until the busy stream gets to it
        ready, upstream = upstream, torch.full_like(upstream, float("nan"))
        torch.cuda._sleep(sleep_cycles)
        upstream.copy_(ready)
    grads = torch.autograd.grad(value, [t for t in leaves if t is not None], upstream)
    return (value.detach(), *grads)


def _assert_close(got, expected, device=None):
    """got = (value, *gradients) equals expected to the rounding of its dtype (RTOL, relative
    to each result's largest entry), and got's results live on device if given."""
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        if device is not None:
            assert g.device == torch.device(device)
        assert g.dtype == e.dtype
        rtol = RTOL[e.dtype][k > 0]
        atol = rtol * e.abs().max().item() + torch.finfo(e.dtype).tiny
        torch.testing.assert_close(g.cpu(), e.cpu(), rtol=rtol, atol=atol)


def _assert_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.device == e.device and torch.equal(g, e)


def _resident_bytes(m, n, dtype):
    # csrc/cuda/common.cuh, ResidentShared: C with rows padded to an odd stride, f, g, phi,
    # psi and a 256-entry reduction scratch.
    return (m * (n | 1) + 2 * (m + n) + 256) * dtype.itemsize


def _strategy(m, n, dtype):
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if limit is None:
        pytest.skip("this torch does not report the opt-in shared memory per block")
    return "resident" if _resident_bytes(m, n, dtype) <= limit else "tiled"


@pytest.mark.parametrize("dtype", DTYPES)
def test_case_grid_runs_both_the_resident_and_the_tiled_strategy(dtype):
    strategies = {case.name: _strategy(case.m, case.n, dtype) for case in CASES}
    assert set(strategies.values()) == {"resident", "tiled"}, strategies
    for name, strategy in strategies.items():
        assert not name.startswith(("resident", "tiled")) or name.startswith(strategy), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_cuda_loss_and_its_gradients_equal_cpu(case, cost, dtype):
    problem = _problem(case, dtype)
    options = dict(eps=case.eps, iters=case.iters, cost=cost)
    expected = _evaluate(sk.sinkhorn_loss, problem, "cpu", **options)
    got = _evaluate(sk.sinkhorn_loss, problem, "cuda", **options)
    assert got[0].shape == (() if case.batch is None else (case.batch,))
    _assert_close(got, expected, device="cuda:0")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("iters", [1, 2, 7, 30])
@pytest.mark.parametrize("eps", [0.05, 1.0, 25.0])
def test_cuda_cost_and_its_gradients_equal_cpu(eps, iters, cost, dtype):
    problem = random_problem(23, 17, 3, dtype=dtype)
    options = dict(eps=eps, iters=iters, cost=cost)
    _assert_close(_evaluate(sk.sinkhorn_cost, problem, "cuda", **options),
                  _evaluate(sk.sinkhorn_cost, problem, "cpu", **options), device="cuda:0")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_cuda_online_loss_and_its_gradients_equal_cpu_online(case, cost, dtype):
    problem = _problem(case, dtype)
    options = dict(eps=case.eps, iters=case.iters, cost=cost, backend="online")
    expected = _evaluate(sk.sinkhorn_loss, problem, "cpu", **options)
    got = _evaluate(sk.sinkhorn_loss, problem, "cuda", **options)
    _assert_close(got, expected, device="cuda:0")


# Sizes that cross the online kernels' tiles (16 points, rows in blocks of 128) and chunks of
# 8 coordinates: d = 9 is two chunks, d = 70 nine.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("m,n,d,batch", [(1, 1, 1, None), (130, 37, 9, None), (45, 29, 70, 2)])
def test_cuda_online_cost_and_its_gradients_equal_cpu_online(m, n, d, batch, iters, cost, dtype):
    problem = random_problem(m, n, d, batch=batch, dtype=dtype)
    options = dict(eps=0.5 * d, iters=iters, cost=cost, backend="online")
    _assert_close(_evaluate(sk.sinkhorn_cost, problem, "cuda", **options),
                  _evaluate(sk.sinkhorn_cost, problem, "cpu", **options), device="cuda:0")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_online_results_are_bitwise_identical_from_call_to_call(dtype):
    problem = random_problem(300, 500, 3, batch=2, dtype=dtype)
    options = dict(eps=0.2, iters=15, backend="online")
    first = _evaluate(sk.sinkhorn_loss, problem, "cuda", **options)
    for _ in range(2):
        _assert_equal(_evaluate(sk.sinkhorn_loss, problem, "cuda", **options), first)


_STRATEGY_SIZES = [pytest.param((100, 100), id="resident_100x100"),
                   pytest.param((300, 500), id="tiled_300x500")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", _STRATEGY_SIZES)
def test_cuda_results_are_bitwise_identical_from_call_to_call(size, dtype):
    problem = random_problem(*size, 3, batch=2, dtype=dtype)
    first = _evaluate(sk.sinkhorn_loss, problem, "cuda", eps=0.2, iters=15)
    for _ in range(2):
        _assert_equal(_evaluate(sk.sinkhorn_loss, problem, "cuda", eps=0.2, iters=15), first)


@pytest.mark.parametrize("size", _STRATEGY_SIZES)
def test_non_default_stream_gives_the_default_stream_result(size):
    problem = random_problem(*size, 3, batch=2, dtype=torch.float32)
    options = dict(eps=0.2, iters=15, cost="euclidean")
    expected = _evaluate(sk.sinkhorn_loss, problem, "cuda", **options)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = _evaluate(sk.sinkhorn_loss, problem, "cuda", sleep_cycles=50_000_000, **options)
    torch.cuda.synchronize()
    _assert_equal(got, expected)


# (Where the module is skipped, its reason is the one shown.)
@pytest.mark.skipif(_SKIP_REASON is None and torch.cuda.device_count() < 2,
                    reason="needs a second GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", _STRATEGY_SIZES)
def test_inputs_on_a_second_gpu_give_the_first_gpus_results_there(size, dtype):
    problem = random_problem(*size, 3, batch=2, dtype=dtype)
    current = torch.cuda.current_device()
    on_first = _evaluate(sk.sinkhorn_loss, problem, "cuda:0", eps=0.2, iters=15)
    on_second = _evaluate(sk.sinkhorn_loss, problem, "cuda:1", eps=0.2, iters=15)
    assert torch.cuda.current_device() == current
    # Tolerance, not bitwise: the two GPUs may differ and so run different strategies.
    _assert_close(on_second, on_first, device="cuda:1")


def _cuda(tensors):
    return [t.cuda() for t in tensors]


def _non_contiguous(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() == 3 else \
        torch.stack([t, t], -1)[..., 0]


@pytest.mark.parametrize("size", [pytest.param((6, 5), id="6x5"),
                                  pytest.param((150, 300), id="150x300_tiled_in_float64")])
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward_op_on_cuda(requires_grad, cost, size):
    args = [t.requires_grad_(requires_grad) for t in _cuda(random_problem(*size, 2, batch=2))]
    torch.library.opcheck(ops.sinkhorn_cost.default, (*args, 0.5, 4, cost))


def test_opcheck_forward_op_on_cuda_non_contiguous():
    args = [_non_contiguous(t).requires_grad_() for t in _cuda(random_problem(6, 5, 3, batch=2))]
    assert not any(t.is_contiguous() for t in args)
    torch.library.opcheck(ops.sinkhorn_cost.default, (*args, 0.5, 4, "euclidean"))


@pytest.mark.parametrize("op", [ops.sinkhorn_cost, ops.sinkhorn_loss], ids=lambda op: op.__name__)
@pytest.mark.parametrize("contiguous", [True, False])
def test_opcheck_with_gradients_asked_for_on_cuda(op, contiguous):
    x, y, a, b = _cuda(random_problem(6, 5, 2, batch=2))
    if not contiguous:
        x, a = _non_contiguous(x), _non_contiguous(a)
        assert not (x.is_contiguous() or a.is_contiguous())
    torch.library.opcheck(op.default,
                          (x, y, a, b, 0.5, 4, "sqeuclidean", "tensorized", [True] * 4))


@pytest.mark.parametrize("op", [ops.sinkhorn_cost, ops.sinkhorn_loss], ids=lambda op: op.__name__)
def test_opcheck_unbatched_without_weights_on_cuda(op):
    x, y = _cuda(random_problem(6, 5, 2, weighted=False)[:2])
    torch.library.opcheck(op.default,
                          (x, y, None, None, 0.5, 4, "sqeuclidean", "tensorized", [True] * 4))


def test_compiled_cuda_loss_and_gradients_match_eager():
    from torch.utils._triton import has_triton

    if not has_triton():
        pytest.skip("torch.compile on CUDA needs triton")
    torch._dynamo.reset()
    problem = _cuda(random_problem(30, 20, 2, batch=2, dtype=torch.float32))

    def step(x, y, a, b):
        return sk.sinkhorn_loss(x, y, eps=0.3, iters=10, x_weights=a, y_weights=b).sum() * 2.0

    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in problem]
        loss = fn(*leaves)
        loss.backward()
        results.append((loss.detach(), *(t.grad for t in leaves)))
    assert all(t.is_cuda for t in results[1])
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected)


def test_large_problem_20000_points_float32_is_finite_and_matches_float64():
    m = n = 20_000
    # float32 forward + backward holds C, C^T and two gradient buffers (4 m n floats); the
    # float64 forward holds C and C^T (2 m n doubles): 6.4 GB each, one after the other.
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < 8 * 2**30:
        pytest.skip(f"needs 8 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    x, y, _, _ = random_problem(m, n, 3, dtype=torch.float32, weighted=False)
    options = dict(eps=0.1, iters=10)
    with torch.no_grad():
        expected = sk.sinkhorn_loss(x.cuda().double(), y.cuda().double(), **options).item()
    torch.cuda.empty_cache()
    xl, yl = x.cuda().requires_grad_(), y.cuda().requires_grad_()
    loss = sk.sinkhorn_loss(xl, yl, **options)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.is_cuda and torch.isfinite(loss)
    torch.testing.assert_close(loss.item(), expected, rtol=1e-3, atol=0)
    for leaf in (xl, yl):
        assert leaf.grad.shape == (m, 3) and leaf.grad.dtype == torch.float32
        assert leaf.grad.is_cuda and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0
    del loss, xl, yl
    torch.cuda.empty_cache()


def test_large_online_problem_100000_points_keeps_memory_linear_and_matches_float64():
    m = n = 100_000
    x, y, _, _ = random_problem(m, n, 3, dtype=torch.float32, weighted=False)
    options = dict(eps=0.1, iters=10, backend="online")
    with torch.no_grad():
        expected = sk.sinkhorn_loss(x.cuda().double(), y.cuda().double(), **options).item()
    torch.cuda.empty_cache()
    xl, yl = x.cuda().requires_grad_(), y.cuda().requires_grad_()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    loss = sk.sinkhorn_loss(xl, yl, **options)
    loss.backward()
    # The histories (3 problems, u and v, L levels: 24 MB), the gradients and vectors of m + n:
    # one m x n float32 matrix would be 40 GB.
    extra_mb = (torch.cuda.max_memory_allocated() - start) / 2**20
    assert extra_mb < 100, f"online fwd + bwd took {extra_mb:.0f} MiB at m = n = 100 000"
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss.item(), expected, rtol=1e-3, atol=0)
    for leaf in (xl, yl):
        assert leaf.grad.shape == (m, 3) and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0
    del loss, xl, yl
    torch.cuda.empty_cache()
