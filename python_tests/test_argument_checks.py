"""Bad input gets a clear error that names the argument and what was expected."""

import subprocess
import sys

import pytest
import torch

import sinkhorn_ext as sk
from sinkhorn_ext._ops import KERNEL_DEVICES, check_device

X = torch.randn(5, 2)
Y = torch.randn(4, 2)


def _raises(error, match, *args, fn=sk.sinkhorn_loss, **kwargs):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("fn", [sk.sinkhorn_loss, sk.sinkhorn_cost])
def test_mismatched_feature_dimension(fn):
    _raises(ValueError, r"same feature dimension d, got 2 and 3", X, torch.randn(4, 3), fn=fn)


def test_empty_batch():
    _raises(ValueError, r"x must contain at least one problem \(B >= 1\)",
            torch.randn(0, 5, 2), torch.randn(0, 4, 2))


@pytest.mark.parametrize("dtype,eps", [(torch.float32, 1e-46), (torch.float32, 1e39),
                                       (torch.float64, 1e-320)])
def test_eps_out_of_the_range_of_the_dtype(dtype, eps):
    # A positive finite double that becomes 0, a subnormal or inf in the compute dtype.
    _raises(ValueError, r"eps = .* is out of the range of", X.to(dtype), Y.to(dtype), eps=eps)


def test_mismatched_batch_size():
    _raises(ValueError, r"same batch size, got 2 and 3", torch.randn(2, 5, 2), torch.randn(3, 4, 2))


@pytest.mark.parametrize("x,y,match", [
    (torch.randn(5), Y, r"x must have shape \(m, d\) or \(B, m, d\), got \(5,\)"),
    (X, torch.randn(1, 1, 4, 2), r"y must have shape \(n, d\) or \(B, n, d\), got \(1, 1, 4, 2\)"),
    (X, torch.randn(1, 4, 2), r"must both be batched \(3-D\) or both unbatched \(2-D\)"),
])
def test_wrong_rank(x, y, match):
    _raises(ValueError, match, x, y)


@pytest.mark.parametrize("x,y,match", [
    (torch.randn(0, 2), Y, r"x must contain at least one point"),
    (X, torch.randn(3, 0, 2), r"must both be batched"),
    (torch.randn(2, 5, 2), torch.randn(2, 0, 2), r"y must contain at least one point"),
    (torch.randn(5, 0), torch.randn(4, 0), r"x must have at least one feature"),
])
def test_empty_cloud(x, y, match):
    _raises(ValueError, match, x, y)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_floating_dtype(dtype):
    _raises(TypeError, r"x must be a float32 or float64 tensor", X.to(dtype), Y.to(dtype))


def test_mixed_dtypes():
    _raises(TypeError, r"y must have the dtype of x \(torch.float32\), got torch.float64", X, Y.double())
    _raises(TypeError, r"y must have the dtype of x \(torch.float16\), got torch.float32", X.half(), Y)
    _raises(TypeError, r"x_weights must have the dtype of its points \(Float\), got Double",
            X, Y, x_weights=torch.full((5,), 0.2, dtype=torch.float64))


def test_non_tensor_input():
    _raises(TypeError, r"x must be a torch.Tensor, got list", [[0.0, 1.0]], Y)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("inf"), float("nan")])
def test_eps_must_be_positive_and_finite(eps):
    _raises(ValueError, r"eps must be a finite number > 0", X, Y, eps=eps)


def test_eps_and_iters_types():
    _raises(TypeError, r"eps must be a real number, got str", X, Y, eps="0.1")
    _raises(TypeError, r"iters must be an int, got float", X, Y, iters=10.0)


@pytest.mark.parametrize("iters", [0, -3])
def test_iters_must_be_at_least_one(iters):
    _raises(ValueError, r"iters must be an integer >= 1", X, Y, iters=iters)


@pytest.mark.parametrize("weights,match", [
    (torch.full((4,), 0.25), r"x_weights must have shape \(5,\), got \(4,\)"),
    (torch.full((1, 5), 0.2), r"x_weights must have shape \(5,\), got \(1, 5\)"),
    (torch.tensor([0.5, 0.5, 0.5, -0.5, 0.0]), r"x_weights must be nonnegative"),
    (torch.tensor([0.2, 0.2, 0.2, 0.2, float("nan")]), r"x_weights must be nonnegative"),
    (torch.full((5,), 0.3), r"x_weights must sum to 1"),
    ([0.2] * 5, r"x_weights must be a torch.Tensor or None, got list"),
])
def test_bad_weights(weights, match):
    _raises((ValueError, TypeError), match, X, Y, x_weights=weights)


def test_bad_batched_weights():
    _raises(ValueError, r"y_weights must have shape \(2, 4\), got \(4,\)",
            torch.randn(2, 5, 2), torch.randn(2, 4, 2), y_weights=torch.full((4,), 0.25))


@pytest.mark.parametrize("fn", [sk.sinkhorn_loss, sk.sinkhorn_cost, sk.reference.sinkhorn_loss])
def test_unknown_cost(fn):
    _raises(ValueError, r'cost must be "sqeuclidean" or "euclidean", got "cosine"', X, Y,
            fn=fn, cost="cosine")


def test_unknown_backend_and_reduction():
    _raises(ValueError, r"backend must be one of", X, Y, backend="keops")
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        sk.SinkhornLoss(reduction="max")


def test_direct_op_call_checks_its_contract():
    ops = torch.ops.sinkhorn_ext
    y = Y.unsqueeze(0)
    a, b = torch.full((1, 5), 0.2), torch.full((1, 4), 0.25)
    for op in (ops.sinkhorn_cost, ops.sinkhorn_loss):
        with pytest.raises(ValueError, match=r"x must have shape \(m, d\) or \(B, m, d\), "
                                             r"got \(5,\)"):
            op(X[:, 0], Y, None, None, 0.1, 5, "sqeuclidean", "tensorized", [True] * 4)
        with pytest.raises(ValueError, match=r"x and y must both be batched \(3-D\) or both "
                                             r"unbatched \(2-D\), got shapes \(5, 2\) and "
                                             r"\(1, 4, 2\)"):
            op(X, y, None, None, 0.1, 5, "sqeuclidean", "tensorized", [True] * 4)
        with pytest.raises(ValueError, match=r"x_weights must have shape \(1, 5\), got \(5,\)"):
            op(X.unsqueeze(0), y, a[0], b, 0.1, 5, "sqeuclidean", "tensorized", [True] * 4)
        with pytest.raises(ValueError, match=r"y_weights must have shape \(4,\), got \(1, 4\)"):
            op(X, Y, None, b, 0.1, 5, "sqeuclidean", "tensorized", [True] * 4)


def test_import_without_the_extension_says_how_to_build_it():
    code = "import sys; sys.modules['sinkhorn_ext._C'] = None; import sinkhorn_ext"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install --no-build-isolation" in result.stderr


@pytest.mark.skipif("cuda" in KERNEL_DEVICES, reason="this build has CUDA kernels")
def test_cuda_input_without_cuda_kernels_says_how_to_build_them():
    with pytest.raises(RuntimeError, match=r"no kernels for cuda tensors.*FORCE_CUDA=1"):
        check_device(torch.device("cuda"))


def test_unsupported_device_is_named():
    with pytest.raises(RuntimeError, match=r"no kernels for xpu tensors.*cpu and cuda"):
        check_device(torch.device("xpu"))
