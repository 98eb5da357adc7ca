"""Fused Triton loss kernels beside their PyTorch references; installed as `fastmlic.kernels`.

Each op takes `impl="auto" | "triton" | "torch"`: auto runs Triton on CUDA tensors and the torch path
on CPU tensors; "triton" on CPU runs under the Triton interpreter (TRITON_INTERPRET=1), as the tests do.
This package imports only torch and triton.
"""

from .asl import AsymmetricLoss, asl_loss, asl_reference
from .supcon import SupConLoss, supcon_loss, supcon_reference

__all__ = ["AsymmetricLoss", "SupConLoss", "asl_loss", "asl_reference", "supcon_loss", "supcon_reference"]
