"""Shared helpers of the test suite: the grids of dtypes and costs, random problems."""

import torch

from sinkhorn_ext._inputs import COSTS  # noqa: F401  (re-exported for the tests)
from sinkhorn_ext._ops import KERNEL_DEVICES
DTYPES = (torch.float32, torch.float64)
# Agreement with the float64 reference: rounding accumulated over a few dozen iterations.
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def random_weights(shape, dtype=torch.float64, generator=None):
    w = torch.rand(shape, dtype=dtype, generator=generator) + 0.1
    return w / w.sum(-1, keepdim=True)


def random_problem(m, n, d, batch=None, dtype=torch.float64, weighted=True, seed=0):
    """Clouds x (m, d), y (n, d) (with a leading batch if given) and, if weighted, random
    probability vectors for them (None otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, m, d, dtype=dtype, generator=gen)
    y = torch.randn(*lead, n, d, dtype=dtype, generator=gen) * 0.8 + 0.5
    if not weighted:
        return x, y, None, None
    return x, y, random_weights((*lead, m), dtype, gen), random_weights((*lead, n), dtype, gen)


def cuda_skip_reason():
    """Why the CUDA tests cannot run here (a string), or None where they can: they need a GPU
    and a CUDA build of the extension."""
    if not torch.cuda.is_available():
        return (f"needs a GPU: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA {torch.version.cuda})")
    if "cuda" not in KERNEL_DEVICES:
        return ("needs a CUDA build of sinkhorn_ext: this one has no CUDA kernels "
                "(rebuild it with FORCE_CUDA=1 pip install --no-build-isolation .)")
    return None
