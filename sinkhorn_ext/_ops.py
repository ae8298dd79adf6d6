"""Loads the compiled ops and gives them what torch needs besides the kernels: fake (meta)
kernels for torch.compile and the replay backward as their autograd formula."""

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


@torch.library.register_fake("sinkhorn_ext::sinkhorn_cost")
def _sinkhorn_cost_fake(x, y, x_weights, y_weights, eps, iters, cost, backend="tensorized"):
    torch._check(x.dim() == 3 and y.dim() == 3, lambda: "x and y must be 3-D")
    torch._check(x.shape[0] == y.shape[0], lambda: "x and y must have the same batch size")
    batch, m, n = x.shape[0], x.shape[1], y.shape[1]
    return x.new_empty(batch), x.new_empty(batch, iters, m), x.new_empty(batch, iters, n)


@torch.library.register_fake("sinkhorn_ext::sinkhorn_cost_backward")
def _sinkhorn_cost_backward_fake(
    grad_cost, x, y, x_weights, y_weights, u_history, v_history, eps, cost, backend="tensorized"
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
    return (x.new_empty(batch), *histories)


@torch.library.register_fake("sinkhorn_ext::sinkhorn_loss_backward")
def _sinkhorn_loss_backward_fake(
    grad_loss, x, y, x_weights, y_weights, u_xy, v_xy, u_xx, v_xx, u_yy, v_yy, output_mask, eps,
    cost, backend="tensorized"
):
    return _sinkhorn_cost_backward_fake(grad_loss, x, y, x_weights, y_weights, u_xy, v_xy,
                                        eps, cost)


def _setup_context(ctx, inputs, output):
    x, y, x_weights, y_weights, eps, _iters, cost, backend = inputs  # defaults filled in
    histories = output[1:]
    ctx.mark_non_differentiable(*histories)
    ctx.save_for_backward(x, y, x_weights, y_weights, *histories)
    ctx.eps, ctx.cost, ctx.backend = eps, cost, backend


def _cost_backward(ctx, grad_cost, *_grad_histories):
    grads = ops.sinkhorn_cost_backward(grad_cost.contiguous(), *ctx.saved_tensors, ctx.eps,
                                       ctx.cost, ctx.backend)
    return (*grads, None, None, None, None)


def _loss_backward(ctx, grad_loss, *_grad_histories):
    # The self-term of a cloud whose gradients nobody asked for is not replayed.
    grads = ops.sinkhorn_loss_backward(grad_loss.contiguous(), *ctx.saved_tensors,
                                       list(ctx.needs_input_grad[:4]), ctx.eps, ctx.cost,
                                       ctx.backend)
    return (*grads, None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "sinkhorn_ext computes first derivatives only: differentiating its gradient "
        "(double backward, create_graph=True) is not supported"
    )


for _op, _backward in (("sinkhorn_cost", _cost_backward), ("sinkhorn_loss", _loss_backward)):
    torch.library.register_autograd(
        f"sinkhorn_ext::{_op}", _backward, setup_context=_setup_context
    )
    # Without a formula, autograd would treat the gradient as a constant and return second
    # derivatives that are silently wrong; this makes asking for them an error.
    torch.library.register_autograd(
        f"sinkhorn_ext::{_op}_backward", _no_double_backward,
        setup_context=lambda ctx, inputs, output: None,
    )
