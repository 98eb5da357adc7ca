#!/usr/bin/env python
"""Registers, spills and shared memory of every kernel variant the launchers can run, compiled for
sm_90 (H100/H200) by the Triton installed here: no GPU needed, ptxas reports them.

    python benchmarks/kernel_resources.py            # every tile of every variant
    python benchmarks/kernel_resources.py --quick    # the first (default) tile of each variant only

A variant is what the launcher's `plan` / `launch_config` picks for an input (dtype, width D, label
mode); the SupCon tiles are those its autotuner tries (`GPU_TILES`). A row with spills or more shared
memory than a block may have (227 KB on sm_90) is one the GPU would run slowly or refuse.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import markdown_table  # noqa: E402

SM90_SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90
TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Compiled:
    registers: int
    spill_bytes: int  # spill stores
    shared_bytes: int
    ptx: str


def compile_sm90(kernel, signature: dict, constexprs: dict, num_warps: int, num_stages: int = 2,
                 aligned: tuple[str, ...] = ()) -> Compiled:  # fmt: skip
    """Compile `kernel` for sm_90 with these argument types and constants; `aligned` names the pointer
    and integer arguments the JIT would mark 16-aligned (torch's allocations, sizes divisible by 16)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    signature = {**signature, **{k: "constexpr" for k in constexprs}}
    names = kernel.arg_names
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        cubin = ptx.with_suffix(".o")
        command = [get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(cubin)]
        report = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return Compiled(registers, spills, compiled.metadata.shared, compiled.asm["ptx"])


def supcon_variants(quick: bool) -> list[dict]:
    """For each dot precision: the widest D slice held whole (SINGLE_K) and a D of several slices, both
    label modes, both passes, each autotuner tile (the first only with `quick`)."""
    from fastmlic.kernels import supcon

    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        whole, _ = supcon.SLICES[supcon.plan(1, 1, dtype, interpret=False)["DOT"]]
        for d in (whole, 3 * whole + 8):  # the widest D held whole, and one streamed in slices
            for positives, c in (("class", 1), ("jaccard", 80)):
                meta = supcon.plan(d, c, dtype, interpret=False)
                for kernel in (supcon._supcon_fwd_kernel, supcon._supcon_bwd_kernel):
                    tiles = supcon.GPU_TILES[supcon.tile_group(kernel, meta)]
                    for m, n, warps, stages in tiles[:1] if quick else tiles:
                        rows.append(dict(op="supcon", kernel=kernel, dtype=dtype, D=d, positives=positives,
                                         meta=dict(meta, JACCARD=positives == "jaccard", BLOCK_M=m,
                                                   BLOCK_N=n),
                                         num_warps=warps, num_stages=stages))  # fmt: skip
    return rows


def supcon_signature(row: dict) -> dict:
    names = ("lse_ptr", "wsum_ptr", "pos_ptr") if row["kernel"].__name__ == "_supcon_fwd_kernel" else (
        "lse_ptr", "a_ptr", "dz_ptr")  # fmt: skip
    jaccard = row["positives"] == "jaccard"
    sig = {"z_ptr": "*" + TRITON_TYPES[row["dtype"]], "lab_ptr": "*u8" if jaccard else "*i32",
           "card_ptr": "*fp32" if jaccard else "*i32", **{n: "*fp32" for n in names}}  # fmt: skip
    sig.update({n: "i32" for n in ("N", "D", "C", "s_zn", "s_zd", "s_lr", "s_lc")})
    return {**sig, "scale": "fp32", "n_bucket": "i32"}


def asl_variants(quick: bool) -> list[dict]:
    """Contiguous (FLAT) and strided inputs, fp32 and bf16 logits, both focal-weight gradients."""
    from fastmlic.kernels import asl

    config = asl.launch_config(1 << 24, interpret=False)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for flat in (True, False):
            if quick and not flat:
                continue
            common = dict(USE_CLIP=True, HAS_IGNORE=False, FLAT=flat, BLOCK=config["BLOCK"],
                          FAST_LOG=config["FAST_LOG"])
            rows.append(dict(op="asl", kernel=asl._asl_fwd_kernel, dtype=dtype, flat=flat,
                             meta=dict(common, WRITE_LOSS=False), num_warps=config["num_warps"]))  # fmt: skip
            for detach in (True, False):
                rows.append(dict(op="asl", kernel=asl._asl_bwd_kernel, dtype=dtype, flat=flat, detach=detach,
                                 meta=dict(common, DETACH=detach, PER_CELL=False),
                                 num_warps=config["num_warps"]))  # fmt: skip
    return rows


def asl_signature(row: dict) -> dict:
    x = "*" + TRITON_TYPES[row["dtype"]]
    if row["kernel"].__name__ == "_asl_fwd_kernel":
        sig = {"x_ptr": x, "y_ptr": "*u8", "ign_ptr": x, "loss_ptr": "*fp32", "partial_ptr": "*fp32"}
    else:
        sig = {"x_ptr": x, "y_ptr": "*u8", "ign_ptr": x, "g_ptr": "*fp32", "dx_ptr": x}
    sig.update({n: "i64" if n == "n_cells" else "i32"
                for n in ("n_cells", "C", "sx_r", "sx_c", "sy_r", "sy_c", "si_r", "si_c")})  # fmt: skip
    return {**sig, **{n: "fp32" for n in ("gamma_pos", "gamma_neg", "clip", "eps")}}


def compile_row(row: dict) -> Compiled:
    signature = supcon_signature(row) if row["op"] == "supcon" else asl_signature(row)
    aligned = tuple(n for n, t in signature.items() if t.startswith("*"))
    if row["op"] == "asl":
        aligned += ("n_cells",)  # the sizes of real batches: B x C with B a multiple of 16
    return compile_sm90(row["kernel"], signature, row["meta"], row["num_warps"], row.get("num_stages", 2),
                        aligned)  # fmt: skip


def vector_loads(ptx: str) -> int:
    """Vectorised global loads in a kernel's PTX (ld.global.v2 / .v4)."""
    return len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]", ptx))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the first (default) tile of each variant only")
    p.add_argument("--json", action="store_true", help="one JSON object per variant instead of the table")
    args = p.parse_args(argv)
    table = []
    for row in supcon_variants(args.quick) + asl_variants(args.quick):
        got = compile_row(row)
        meta = row["meta"]
        what = (f"D={row['D']} {row['positives']} tile {meta['BLOCK_M']}x{meta['BLOCK_N']}x{meta['BLOCK_K']} "
                f"{meta['DOT']}" if row["op"] == "supcon" else
                f"{'contiguous' if row['flat'] else 'strided'} BLOCK {meta['BLOCK']}"
                + (f" detach={row['detach']}" if "detach" in row else ""))  # fmt: skip
        table.append({"kernel": row["kernel"].__name__, "dtype": TRITON_TYPES[row["dtype"]], "variant": what,
                      "warps": row["num_warps"], "stages": row.get("num_stages", ""),
                      "registers": got.registers, "spill bytes": got.spill_bytes,
                      "shared KB": got.shared_bytes / 1024, "vector loads": vector_loads(got.ptx),
                      "fits": got.spill_bytes == 0 and got.shared_bytes <= SM90_SHARED_LIMIT})  # fmt: skip
        print(f"  {table[-1]['kernel']} {table[-1]['dtype']} {what}: {got.registers} registers, "
              f"{got.spill_bytes} B spilled, {got.shared_bytes / 1024:.0f} KB shared", file=sys.stderr)
    import triton

    if args.json:
        print("\n".join(json.dumps(row) for row in table))
        return 0
    print(f"\nkernel resources for sm_90, triton {triton.__version__} (compiled here, no GPU)")
    print(markdown_table(table, ["kernel", "dtype", "variant", "warps", "stages", "registers", "spill bytes",
                                 "shared KB", "vector loads", "fits"]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
