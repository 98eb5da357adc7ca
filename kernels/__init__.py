"""Fused Triton loss kernels beside their PyTorch references; installed as `fastmlic.kernels`."""
