#!/usr/bin/env python
"""Fused loss kernels against what users would run instead, side by side in one run.

    python benchmarks/loss_kernels.py                  # every op, default shapes
    python benchmarks/loss_kernels.py --op asl --dtype bf16 --quick

Providers: the eager PyTorch reference, `torch.compile` of that reference, and the Triton kernel (GPU
only; plus the chunked torch path for SupCon). Forward and forward+backward; median, p20 and p80
time, peak memory, speed-up over eager. A Markdown table goes to stdout and JSON lines (with device,
versions, commit and command) to benchmarks/results/.

On a GPU every row also gets its floor, from ceilings measured in the same run (benchmarks/ceilings.py):
- ASL: the fewest bytes an autograd op moves (each pass reads logits and targets once, the backward
  writes the gradient once) over the measured copy bandwidth;
- SupCon: the GEMMs (2 N^2 D FLOPs forward, 6 N^2 D forward+backward) at the measured dense matmul
  rate of the kernel's operands (bf16/fp16; fp32 inputs take three TF32 products, so a third of the
  TF32 rate), plus the exponentials the maths needs (N^2 forward, 2 N^2 forward+backward) at the
  measured exp2 rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastmlic.kernels import asl_loss, asl_reference, supcon_loss, supcon_reference  # noqa: E402

from benchmarks.ceilings import measure as measure_ceilings  # noqa: E402
from benchmarks.common import environment, markdown_table, peak_memory_bytes, time_ms, write_jsonl  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ASL_SHAPES = [(64, 20), (256, 80), (128, 81), (128, 500), (1024, 500), (64, 9605)]
ASL_LARGE = (16384, 9605)  # 157M cells: large enough to measure bandwidth on a GPU
SUPCON_SHAPES = [(n, d) for n in (1024, 4096, 16384, 65536) for d in (128, 256)]
# on CPU one chunked call at N = 65,536 takes minutes; the CPU run stops at 16,384
SUPCON_CPU_MAX_N = 16384
# what a new user waits for on a CPU (measured on a 2-core EPYC, benchmarks/RESULTS.md)
CPU_DURATION = ("CPU: every default shape runs for about 9 minutes on 2 cores, most of it in SupCon's rows "
                "at N = 16,384 (dense eager: about 20 s a call); --quick takes about 25 s")
DENSE_BYTES_PER_PAIR = 32  # eager SupCon keeps about eight N x N fp32 matrices alive (kernel notes, measured)


@dataclass
class Case:
    op: str
    label: str
    make_inputs: Callable[[], tuple]  # fresh inputs; the first one is differentiated
    providers: dict[str, Callable]
    floor: Callable[[dict, str], float] | None = None  # (ceilings, mode) -> the floor in ms
    needs: dict[str, int] = field(default_factory=dict)  # provider -> bytes it will allocate, when huge


def asl_cases(shapes, dtype, device) -> list[Case]:
    options = dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05)  # the ASL training recipe
    compiled = torch.compile(lambda x, y: asl_reference(x, y, **options))
    providers = {
        "eager": lambda x, y: asl_reference(x, y, **options),
        "torch.compile": compiled,
    }
    if device == "cuda":
        providers["triton"] = lambda x, y: asl_loss(x, y, impl="triton", **options)
    cases = []
    for b, c in shapes:

        def make(b=b, c=c):
            x = torch.randn(b, c, device=device, dtype=dtype) * 3 - 1
            return x, torch.rand(b, c, device=device) < 0.1

        n, size = b * c, torch.finfo(dtype).bits // 8
        # forward: read x and the bool targets; backward: read them again, write dx
        moved = {"fwd": n * (size + 1), "fwd+bwd": n * (size + 1) + n * (size + 1 + size)}
        floor = lambda ceilings, mode, moved=moved: moved[mode] / ceilings["copy_bandwidth_GBps"] / 1e6  # noqa: E731
        cases.append(Case("asl", f"{b}x{c}", make, providers, floor))
    return cases


def supcon_cases(shapes, dtype, device) -> list[Case]:
    dense = lambda z, y: supcon_reference(z, y)  # noqa: E731  (MulCon defaults: T = T_base = 0.2)
    providers = {"dense eager": dense, "dense torch.compile": torch.compile(dense), "chunked torch":
                 lambda z, y: supcon_loss(z, y, impl="torch")}  # fmt: skip
    if device == "cuda":
        providers["triton"] = lambda z, y: supcon_loss(z, y, impl="triton")
    cases = []
    for n, d in shapes:

        def make(n=n, d=d):
            z = torch.nn.functional.normalize(torch.randn(n, d, device=device), dim=1).to(dtype)
            return z, torch.randint(0, 80, (n,), device=device)  # label-level: one class id per embedding

        need = DENSE_BYTES_PER_PAIR * n * n
        cases.append(Case("supcon", f"N={n} D={d}", make, providers, partial(supcon_floor, n, d, dtype),
                          needs={"dense eager": need, "dense torch.compile": need}))  # fmt: skip
    return cases


def supcon_floor(n: int, d: int, dtype: torch.dtype, ceilings: dict, mode: str) -> float:
    """ms of the GEMMs at the operands' measured matmul rate plus the exponentials at the exp2 rate."""
    flops = (2 if mode == "fwd" else 6) * n * n * d
    exps = (1 if mode == "fwd" else 2) * n * n
    rate = ceilings["tf32_matmul_TFLOPs"] / 3 if dtype == torch.float32 else ceilings["bf16_matmul_TFLOPs"]
    return (flops / (rate * 1e12) + exps / (ceilings["exp2_per_s_T"] * 1e12)) * 1e3


CASES = {"asl": asl_cases, "supcon": supcon_cases}


def shape_list(text: str) -> list[tuple[int, int]]:
    """'256x80,16384x9605' -> [(256, 80), (16384, 9605)]."""
    try:
        return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]  # type: ignore[misc]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: shapes are AxB separated by commas") from None


def available_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def run_case(case: Case, mode: str, device: str, repeats: int) -> list[dict]:
    rows = []
    for name, fn in case.providers.items():
        inputs = case.make_inputs()
        x = inputs[0].requires_grad_(mode == "fwd+bwd")

        def step(fn=fn, x=x, inputs=inputs):
            loss = fn(x, *inputs[1:])
            if mode == "fwd+bwd":
                x.grad = None
                loss.backward()

        row = {"op": case.op, "shape": case.label, "mode": mode, "provider": name}
        need, free = case.needs.get(name, 0), available_bytes(device)
        if need > 0.8 * free:
            # reported, not attempted: on Linux an over-committed CPU allocation ends in the OOM killer,
            # and on the GPU it takes a minute of allocations before it fails
            row["status"] = f"out of memory (needs ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free)"
            rows.append(row)
            continue
        try:
            started = time.perf_counter()
            step()  # compile / autotune / first-call allocations outside the timing
            first = time.perf_counter() - started
            if device == "cpu" and first > 1.0:  # seconds-long calls: a few repeats are enough
                row.update(time_ms(step, device, repeats=3, warmup=0))
            else:
                row.update(time_ms(step, device, repeats=repeats))
            row["peak_MB"] = peak_memory_bytes(step, device) / 2**20
        except (torch.OutOfMemoryError, MemoryError):
            row["status"] = "out of memory"
        except RuntimeError as e:  # the CPU allocator reports failure as a RuntimeError
            if "memory" not in str(e):
                raise
            row["status"] = "out of memory"
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    eager = next((r for r in rows if r["provider"] in ("eager", "dense eager") and "median_ms" in r), None)
    for r in rows:
        if eager and "median_ms" in r:
            r["speedup"] = eager["median_ms"] / r["median_ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=["asl", "supcon", "all"], default="all")
    p.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32", help="input dtype (losses accumulate in fp32)"
    )
    p.add_argument("--quick", action="store_true", help="two shapes per op, fewer repeats")
    p.add_argument("--asl-shapes", type=shape_list, metavar="BxC,...", help="instead of the default shapes")
    p.add_argument("--supcon-shapes", type=shape_list, metavar="NxD,...",
                   help="instead of the default shapes")  # fmt: skip
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per provider on CPU")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype]
    started = time.perf_counter()
    if device == "cpu":
        print("no CUDA device: running the CPU providers only (the Triton provider needs a GPU)")
        if not (args.quick or args.asl_shapes or args.supcon_shapes):
            print(CPU_DURATION, flush=True)
    ops = list(CASES) if args.op == "all" else [args.op]
    ceilings = measure_ceilings() if device == "cuda" else None
    rows = []
    for op in ops:
        if op == "asl":
            shapes = ASL_SHAPES[:2] if args.quick else ASL_SHAPES + ([ASL_LARGE] if device == "cuda" else [])
            shapes = args.asl_shapes or shapes
        else:
            shapes = [s for s in SUPCON_SHAPES if device == "cuda" or s[0] <= SUPCON_CPU_MAX_N]
            if args.quick:
                shapes = shapes[:2]
            if device == "cpu" and not args.supcon_shapes:
                print(f"supcon: CPU run covers N <= {SUPCON_CPU_MAX_N}; N = 65,536 needs a GPU")
            shapes = args.supcon_shapes or shapes
        cases = CASES[op](shapes, dtype, device)
        for case in cases:
            if args.no_compile:
                case.providers = {k: v for k, v in case.providers.items() if "compile" not in k}
            for mode in ("fwd", "fwd+bwd"):
                for row in run_case(case, mode, device, 5 if args.quick else args.repeats):
                    if ceilings and case.floor and "median_ms" in row:
                        row["floor_ms"] = case.floor(ceilings, mode)
                        row["x_floor"] = row["median_ms"] / row["floor_ms"]
                    row["dtype"] = args.dtype
                    rows.append(row)
                    beside = "".join(f" {key} {row[key]:.2f}" for key in ("speedup", "x_floor") if key in row)
                    print(f"  {row['op']} {row['shape']} {mode} {row['provider']}: "
                          f"{row.get('median_ms', float('nan')):.3f} ms{beside} {row.get('status', '')}",
                          file=sys.stderr, flush=True)  # fmt: skip  (a timed-out run keeps these lines)
    env = environment()
    measured = "" if not ceilings else (
        f"; measured: copy {ceilings['copy_bandwidth_GBps']:.0f} GB/s, bf16 matmul "
        f"{ceilings['bf16_matmul_TFLOPs']:.0f} TFLOP/s, TF32 {ceilings['tf32_matmul_TFLOPs']:.0f}, "
        f"exp2 {ceilings['exp2_per_s_T']:.2f} T/s")  # fmt: skip
    print(f"\nloss kernels on {env['device']} ({env['cpus']} CPUs), torch {env['torch']}, inputs {args.dtype}"
          + measured)  # fmt: skip
    columns = ["op", "shape", "mode", "provider", "median_ms", "p20_ms", "p80_ms", "peak_MB", "speedup"]
    if ceilings:
        columns += ["floor_ms", "x_floor"]
    print(markdown_table(rows, columns + ["status"]))
    rows = [{"benchmark": "loss_kernels", **r, **(ceilings or {})} for r in rows]
    path = write_jsonl("loss_kernels", rows, env)
    print(f"results: {path}  ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
