#!/usr/bin/env python
"""What this GPU can do at most, measured: the ceilings the loss kernels' floors are computed from.

    python benchmarks/ceilings.py          # a table; --json for one JSON object

- copy bandwidth: a device-to-device copy of 1 GiB, bytes read plus written per second;
- dense matmul rate: 8192^3 products of random data in bf16, and in fp32 with TF32 tensor cores;
- exp2 rate: a Triton kernel of independent exp2 chains, exp2 results per second (the special
  function unit's throughput, which softmax-like kernels such as SupCon share with their GEMMs).
On a machine without CUDA it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, time_ms  # noqa: E402


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s (read + write of a 1 GiB buffer)."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), "cuda")["median_ms"]
    return 2 * src.numel() / (ms / 1e3)


def matmul_flops(dtype: torch.dtype, n: int = 8192) -> float:
    """Dense matmul FLOP/s on random n x n operands (fp32 runs on TF32 tensor cores here)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ms = time_ms(lambda: a @ b, "cuda")["median_ms"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n**3 / (ms / 1e3)


@triton.jit
def _exp2_chains(x_ptr, out_ptr, ITERATIONS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    acc = tl.zeros_like(x)
    for _ in range(ITERATIONS):
        x = tl.exp2(x) * -0.5  # stays in [-0.5, -0.25]: no overflow, no denormals
        acc += x
    tl.store(out_ptr + offs, acc)


def exp2_rate(iterations: int = 512) -> float:
    """exp2 results per second: every thread of many blocks runs its own chain of exp2 in registers."""
    block = 1024
    programs = 64 * torch.cuda.get_device_properties(0).multi_processor_count
    x = -torch.rand(programs * block, device="cuda")
    out = torch.empty_like(x)
    run = lambda: _exp2_chains[(programs,)](x, out, ITERATIONS=iterations, BLOCK=block)  # noqa: E731
    return programs * block * iterations / (time_ms(run, "cuda")["median_ms"] / 1e3)


def measure() -> dict:
    return {
        "copy_bandwidth_GBps": copy_bandwidth() / 1e9,
        "bf16_matmul_TFLOPs": matmul_flops(torch.bfloat16) / 1e12,
        "tf32_matmul_TFLOPs": matmul_flops(torch.float32) / 1e12,
        "exp2_per_s_T": exp2_rate() / 1e12,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON object (environment and ceilings)")
    args = p.parse_args(argv)
    env = environment()
    if not torch.cuda.is_available():
        result = {**env, "status": "no CUDA device: nothing measured"}
    else:
        result = {**env, "gpu_memory_GiB": torch.cuda.get_device_properties(0).total_memory / 2**30,
                  "multiprocessors": torch.cuda.get_device_properties(0).multi_processor_count,
                  "triton": triton.__version__, **measure()}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(markdown_table([result], list(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
