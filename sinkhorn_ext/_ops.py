"""Loads the compiled ops and gives them what torch needs besides their kernels and their
derivatives (both registered in C++, csrc/ops): fake (meta) kernels for torch.compile."""

import torch

try:
    from sinkhorn_ext import _C  # noqa: F401  (registers torch.ops.sinkhorn_ext.*)
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "sinkhorn_ext's compiled extension (sinkhorn_ext._C) could not be loaded: "
        f"{error}. Build it against the installed torch with "
        "`pip install --no-build-isolation .` in the source tree (see README.md)."
    ) from error

ops = torch.ops.sinkhorn_ext


# The devices this build has kernels for (CUDA kernels are compiled only into a CUDA build),
# looked up once: torch.compile traces check_device, and cannot trace the dispatcher query.
KERNEL_DEVICES = frozenset(
    device
    for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if torch._C._dispatch_has_kernel_for_dispatch_key("sinkhorn_ext::sinkhorn_cost", key)
)


def check_device(device: torch.device) -> None:
    """Raises a clear error for tensors on a device this build has no kernels for."""
    if device.type in KERNEL_DEVICES or device.type == "meta":  # meta: the fake kernels below
        return
    hint = (
        " This build has no CUDA kernels: reinstall with a CUDA-enabled torch and toolkit "
        "(`FORCE_CUDA=1 pip install --no-build-isolation .`), or move the inputs to the CPU."
        if device.type == "cuda" else " Supported devices: cpu and cuda."
    )
    raise RuntimeError(f"sinkhorn_ext has no kernels for {device.type} tensors.{hint}")


# Where the forward keeps the cost matrices for the backward (its last output; empty
# elsewhere): the CPU's tensorized backend, where C is a BLAS product (d >= 16) and each
# problem's B m n is at most 2^20 (csrc/cpu/sinkhorn_cpu.cpp, keeps_cost_matrix).
KEPT_COSTS_MIN_DIM = 16
KEPT_COSTS_MAX = 2**20


def _kept_costs(x, backend, problems):
    """The fake of the kept costs: C of each (m, n) in problems, flat, or empty (0,)."""
    batch, d = x.shape[0], x.shape[2]
    kept = (x.device.type == "cpu" and backend == "tensorized" and d >= KEPT_COSTS_MIN_DIM
            and all(batch * m * n <= KEPT_COSTS_MAX for m, n in problems))
    return x.new_empty(sum(batch * m * n for m, n in problems) if kept else 0)


@torch.library.register_fake("sinkhorn_ext::sinkhorn_cost")
def _sinkhorn_cost_fake(x, y, x_weights, y_weights, eps, iters, cost, backend="tensorized"):
    torch._check(x.dim() == 3 and y.dim() == 3, lambda: "x and y must be 3-D")
    torch._check(x.shape[0] == y.shape[0], lambda: "x and y must have the same batch size")
    batch, m, n = x.shape[0], x.shape[1], y.shape[1]
    return (x.new_empty(batch), x.new_empty(batch, iters, m), x.new_empty(batch, iters, n),
            _kept_costs(x, backend, [(m, n)]))


@torch.library.register_fake("sinkhorn_ext::sinkhorn_cost_backward")
def _sinkhorn_cost_backward_fake(
    grad_cost, x, y, x_weights, y_weights, u_history, v_history, kept_costs, eps, cost,
    backend="tensorized"
):
    # The op returns contiguous tensors, whatever the strides of its inputs.
    return (
        x.new_empty(x.shape),
        y.new_empty(y.shape),
        x_weights.new_empty(x_weights.shape),
        y_weights.new_empty(y_weights.shape),
    )


@torch.library.register_fake("sinkhorn_ext::sinkhorn_loss")
def _sinkhorn_loss_fake(x, y, x_weights, y_weights, eps, iters, cost, backend="tensorized"):
    torch._check(x.dim() == 3 and y.dim() == 3, lambda: "x and y must be 3-D")
    torch._check(x.shape[0] == y.shape[0], lambda: "x and y must have the same batch size")
    batch, m, n = x.shape[0], x.shape[1], y.shape[1]
    histories = [x.new_empty(batch, iters, rows) for rows in (m, n, m, m, n, n)]
    return (x.new_empty(batch), *histories, _kept_costs(x, backend, [(m, n), (m, m), (n, n)]))


@torch.library.register_fake("sinkhorn_ext::sinkhorn_loss_backward")
def _sinkhorn_loss_backward_fake(
    grad_loss, x, y, x_weights, y_weights, u_xy, v_xy, u_xx, v_xx, u_yy, v_yy, kept_costs,
    output_mask, eps, cost, backend="tensorized"
):
    return _sinkhorn_cost_backward_fake(grad_loss, x, y, x_weights, y_weights, u_xy, v_xy,
                                        kept_costs, eps, cost)
