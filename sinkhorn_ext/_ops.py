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


def _fake(x, y, x_weights, y_weights, eps, iters, cost, backend="tensorized",
          grad_mask=(False,) * 4):
    """The fake kernel of both ops (same schema): the value, () for clouds (m, d) or (B,) for
    batches (B, m, d), then for each input the gradient of the value's sum, of the input's
    shape where grad_mask asks for it (for None weights, the shape they would have) and empty
    (0,) elsewhere."""
    torch._check(x.dim() in (2, 3) and y.dim() == x.dim(),
                 lambda: "x and y must both be (m, d) or both (B, m, d)")
    torch._check(x.dim() == 2 or x.shape[0] == y.shape[0],
                 lambda: "x and y must have the same batch size")
    shapes = (x.shape, y.shape, x.shape[:-1], y.shape[:-1])
    return (x.new_empty(x.shape[:-2]),
            *(x.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, grad_mask)))


for _name in ("sinkhorn_cost", "sinkhorn_loss"):
    torch.library.register_fake(f"sinkhorn_ext::{_name}")(_fake)
