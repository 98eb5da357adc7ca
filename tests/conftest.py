from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch  # imports no Triton

# Triton reads this when a kernel is decorated: set before anything imports fastmlic.kernels, so
# impl="triton" runs under the interpreter on CPU tensors. Only without CUDA: with it the kernels are
# compiled, and tests/test_gpu.py runs them on CUDA tensors.
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
needs_interpreter = pytest.mark.skipif(
    CUDA, reason="on a CUDA machine the kernels are compiled, not interpreted: tests/test_gpu.py runs them"
)
INTERPRETED = pytest.param("triton", marks=needs_interpreter)  # the impl of the CPU kernel tests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/rawdata.py


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Fresh random data in every test, reproducible from the test's name (printed on failure)."""
    seed = (
        abs(hash(request.node.nodeid)) % 2**32
        if os.environ.get("FASTMLIC_TEST_SEED") is None
        else int(os.environ["FASTMLIC_TEST_SEED"])
    )
    print(f"seed={seed}")
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # per element
    atol: float  # as a fraction of the largest reference magnitude, so it scales with the values
    floor: float = 2.0**-23  # absolute, for O(1) quantities: kernels compute in fp32, which resolves 1.0
    # only to 2^-23 (ASL's 1 - p, say), so a value near 0 is never known better than that


# One table for every kernel test, keyed by the dtype of the tensor being checked. Kernels compute in
# fp32, so an fp32 result (every loss value) is held to fp32 accuracy; gradients come back in the input
# dtype, so bf16/fp16 gradients are held to that dtype's rounding (bf16 keeps 8 mantissa bits: 2^-8).
# fp32 atol is 1e-5 of the largest value: the non-detached ASL gradient subtracts terms as large as
# |log eps| = 18.4 times the largest gradient, so fp32 cancellation alone reaches a few 1e-6 there.
TOLERANCES = {
    torch.float32: Tolerance(rtol=2e-5, atol=1e-5),
    torch.float16: Tolerance(rtol=2e-3, atol=2e-4),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=2e-3),
}
DTYPES = list(TOLERANCES)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype | None = None,
    what: str = "",
    magnitude: float = 0.0,
):
    """`actual` against a float64 `expected` with the tolerance of `dtype` (default: actual's dtype).

    atol scales with the largest expected value, or with `magnitude` when that is larger: the size of
    the terms a result is made of, where cancellation makes the result itself small.
    """
    tol = TOLERANCES[dtype or actual.dtype]
    expected = expected.detach().double()
    largest = float(expected.abs().max()) if expected.numel() else 0.0
    atol = max(tol.atol * max(largest, magnitude), tol.floor)
    torch.testing.assert_close(
        actual.detach().double(), expected, rtol=tol.rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder path under which nothing can be created: a read-only folder, or for root (whom
    permissions do not stop) a path in sysfs, which refuses new entries."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder / "out"
        folder.chmod(0o755)
    elif Path("/sys/kernel").is_dir():
        yield Path("/sys/kernel/fastmlic-test-out")
    else:
        pytest.skip("running as root without sysfs: no location refuses writes here")
