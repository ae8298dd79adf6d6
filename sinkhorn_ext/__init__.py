"""sinkhorn_ext: the Sinkhorn loss of Genevay, Peyre & Cuturi (AISTATS 2018) as fused C++/CUDA
kernels, with exact gradients of the L-step algorithm computed by replaying the stored
potentials; the MMD baseline of the paper's experiments beside it."""

from sinkhorn_ext import reference
from sinkhorn_ext.api import sinkhorn_cost, sinkhorn_loss
from sinkhorn_ext.mmd import mmd_loss
from sinkhorn_ext.nn import SinkhornLoss

__all__ = ["SinkhornLoss", "mmd_loss", "reference", "sinkhorn_cost", "sinkhorn_loss"]
__version__ = "0.1.0"
