"""Multi-label supervised-contrastive (SupCon) loss that never materialises an N x N matrix.

z: [N, D] L2-normalised embeddings; s_ij = z_i . z_j / T. For anchor i the denominator runs over
every j != i; its positives carry weights W_ij (j != i):

    positives="class"    labels [N] int:        W_ij = [l_i == l_j]        (MulCon, label level)
    positives="jaccard"  labels [N, C] 0/1:     W_ij = |y_i & y_j| / |y_i | y_j|   (image level)

    loss = -(T / T_base) (1 / N) sum_i  sum_j W_ij log P_ij / sum_j W_ij,   P_ij = exp(s_ij - LSE_i)

An anchor without positives contributes 0 but still counts in N: MulCon's `loss.sum() / len_pos` and
HobbitLong's SupConLoss (after its NaN fix). With one-hot labels the two modes are the same loss.

Closed form used by both fast paths (derived in the kernel notes, verified here against autograd):
    LSE_i = log sum_{k != i} exp(s_ik),   n_i = [sum_j W_ij > 0],   a_i = n_i / sum_j W_ij
    loss  = (c / N) sum_i ( n_i LSE_i - a_i sum_j W_ij s_ij ),   c = T / T_base
    dL/dz_m = c / (N T) sum_k A_mk z_k,   A_mk = n_m P_mk + n_k P_km - (a_m + a_k) W_mk   (A_mm = 0)
s is symmetric, so row m's program computes the column term P_km itself: one backward pass, no atomics.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .asl import use_triton

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453

MODES = ("class", "jaccard")


# --------------------------------------------------------------------------- 1. reference (dense)


def _pair_weights(labels_rows: torch.Tensor, labels: torch.Tensor, positives: str, dtype) -> torch.Tensor:
    """W for a block of rows against all rows (diagonal not removed)."""
    if positives == "class":
        return (labels_rows[:, None] == labels[None, :]).to(dtype)
    rows, cols = labels_rows.to(dtype), labels.to(dtype)
    inter = rows @ cols.T
    union = rows.sum(1)[:, None] + cols.sum(1)[None, :] - inter
    return torch.where(
        union > 0, inter / union.clamp(min=1), torch.zeros((), dtype=dtype, device=rows.device)
    )


def supcon_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.2,
    base_temperature: float = 0.2,
    positives: str = "class",
) -> torch.Tensor:
    """The specification: dense N x N PyTorch as in HobbitLong/MulCon, computing in fp32 (fp64 for fp64)."""
    dtype = torch.promote_types(z.dtype, torch.float32)
    x = z.to(dtype)
    n = x.shape[0]
    if n == 0:
        return x.sum() * 0
    logits = x @ x.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability only; cancels
    not_self = ~torch.eye(n, dtype=torch.bool, device=x.device)
    weights = _pair_weights(labels, labels, positives, dtype) * not_self
    exp_logits = torch.exp(logits) * not_self
    # the floor only matters for an empty denominator (N = 1), where it keeps the gradient finite
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True).clamp(min=torch.finfo(dtype).tiny))
    weight_sum = weights.sum(1)
    # where(): an anchor alone (N = 1) has log_prob = +inf against weight 0
    mean_log_prob_pos = torch.where(weights > 0, weights * log_prob, 0).sum(1) / torch.where(
        weight_sum < 1e-6, 1, weight_sum
    )
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


# --------------------------------------------------------------------------- 2. kernels
#
# `n_bucket` (N's power of two) is not read: it is the autotuner's key, so a new N does not retune.
# Both passes work in base 2: s2 = z_i . z_j (log2 e / T), so every exponential is one exp2 (the
# hardware's own instruction) and the launcher converts the row statistics back to natural units.
# Forward: one program per BLOCK_M rows streams all BLOCK_N column tiles, keeping an online
# log-sum-exp (m, l) plus sum_j W_ij and sum_j W_ij s2_ij per row; it stores 3 floats per row.
# Backward: the same tiles, recomputed, give A (see the header) and acc_I += A_IJ @ z_J, one program
# per (row block, BLOCK_K columns of dz).
# The Gram tile runs over D in BLOCK_K slices. With D <= BLOCK_K (SINGLE_K) the row block is loaded
# once and the column tile loaded for the Gram is reused for A @ z; a wider D reads both slice by
# slice for every tile, and the backward recomputes the Gram once per BLOCK_K columns of dz. So
# registers and shared memory stay bounded for any D.
# Dot precision (DOT): "ieee" (fp32 products; the interpreter, where tl.dot on bf16 multiplies raw bit
# patterns, triton#11584, so every tile is cast to fp32 right after tl.load: CAST_FP32), "tf32x3"
# (fp32 inputs on the GPU: tensor cores, error near fp32's) or "native" (bf16/fp16 operands on the
# tensor cores, fp32 accumulation).


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    if DOT == "native":
        out = tl.dot(a, b)
    else:
        out = tl.dot(a, b, input_precision=DOT)
    return out


@triton.jit
def _load_tile(ptr, rows, in_rows, cols, in_cols, s_r, s_c, CAST_FP32: tl.constexpr):
    tile = tl.load(ptr + rows[:, None] * s_r + cols[None, :] * s_c, mask=in_rows[:, None] & in_cols[None, :],
                   other=0.0)  # fmt: skip
    return tile.to(tl.float32) if CAST_FP32 else tile


@triton.jit
def _weights_tile(lab_ptr, card_ptr, offs_m, offs_n, in_m, in_n, C, s_lr, s_lc,
                  JACCARD: tl.constexpr, CAST_FP32: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    if JACCARD:
        inter = tl.zeros((offs_m.shape[0], offs_n.shape[0]), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + tl.arange(0, BLOCK_C)
            in_c = cc < C
            yi = tl.load(lab_ptr + offs_m[:, None] * s_lr + cc[None, :] * s_lc,
                         mask=in_m[:, None] & in_c[None, :], other=0)  # fmt: skip
            yj = tl.load(lab_ptr + offs_n[:, None] * s_lr + cc[None, :] * s_lc,
                         mask=in_n[:, None] & in_c[None, :], other=0)  # fmt: skip
            if CAST_FP32:
                inter += tl.dot(yi.to(tl.float32), tl.trans(yj.to(tl.float32)), input_precision="ieee")
            else:  # 0/1 are exact in fp16 and the counts in its fp32 accumulator: tensor cores, exact
                inter += tl.dot(yi.to(tl.float16), tl.trans(yj.to(tl.float16)))
        ci = tl.load(card_ptr + offs_m, mask=in_m, other=0.0)
        cj = tl.load(card_ptr + offs_n, mask=in_n, other=0.0)
        union = ci[:, None] + cj[None, :] - inter
        return tl.where(union > 0, inter / tl.where(union > 0, union, 1.0), 0.0)
    else:
        li = tl.load(lab_ptr + offs_m * s_lr, mask=in_m, other=-1)
        lj = tl.load(lab_ptr + offs_n * s_lr, mask=in_n, other=-2)
        return (li[:, None] == lj[None, :]).to(tl.float32)


@triton.jit
def _gram_tile(z_ptr, zi, offs_m, in_m, offs_n, in_n, D, s_zn, s_zd, SINGLE_K: tl.constexpr,
               CAST_FP32: tl.constexpr, DOT: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """z_I . z_J [BLOCK_M, BLOCK_N] in fp32, and z_J (all of D) with SINGLE_K. Then `zi` is z_I, loaded
    once per program; otherwise both are read slice by slice (from L2: the program re-reads them)."""
    offs_k = tl.arange(0, BLOCK_K)
    if SINGLE_K:
        zj = _load_tile(z_ptr, offs_n, in_n, offs_k, offs_k < D, s_zn, s_zd, CAST_FP32)
        s = _dot(zi, tl.trans(zj), DOT)
    else:
        zj = zi  # not used: the backward loads its own columns of z_J
        s = tl.zeros((offs_m.shape[0], offs_n.shape[0]), tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + offs_k
            a = _load_tile(z_ptr, offs_m, in_m, kk, kk < D, s_zn, s_zd, CAST_FP32)
            b = _load_tile(z_ptr, offs_n, in_n, kk, kk < D, s_zn, s_zd, CAST_FP32)
            s += _dot(a, tl.trans(b), DOT)
    return s, zj


@triton.jit
def _supcon_fwd_kernel(
    z_ptr, lab_ptr, card_ptr, lse_ptr, wsum_ptr, pos_ptr,
    N, D, C, s_zn, s_zd, s_lr, s_lc, scale, n_bucket,
    JACCARD: tl.constexpr, SINGLE_K: tl.constexpr, CAST_FP32: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    in_m = offs_m < N
    zi = _load_tile(z_ptr, offs_m, in_m, offs_k, offs_k < D, s_zn, s_zd, CAST_FP32) if SINGLE_K else 0.0
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    wsum = tl.zeros((BLOCK_M,), tl.float32)
    pos = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        valid = in_m[:, None] & in_n[None, :] & (offs_m[:, None] != offs_n[None, :])
        # the weights first, then the Gram tile: fewer [BLOCK_M, BLOCK_N] tiles live at once
        w = _weights_tile(lab_ptr, card_ptr, offs_m, offs_n, in_m, in_n, C, s_lr, s_lc, JACCARD, CAST_FP32,
                          BLOCK_C)  # fmt: skip
        w = tl.where(valid, w, 0.0)
        wsum += tl.sum(w, axis=1)
        gram, _ = _gram_tile(z_ptr, zi, offs_m, in_m, offs_n, in_n, D, s_zn, s_zd, SINGLE_K, CAST_FP32, DOT,
                             BLOCK_K)  # fmt: skip
        s = gram * scale
        pos += tl.sum(w * s, axis=1)  # w is 0 off the valid pairs
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing yet: no inf - inf
        row_sum = row_sum * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), axis=1)
        m = m_new
    lse = tl.where(row_sum > 0, m + tl.log2(tl.where(row_sum > 0, row_sum, 1.0)), float("-inf"))
    tl.store(lse_ptr + offs_m, lse, mask=in_m)
    tl.store(wsum_ptr + offs_m, wsum, mask=in_m)
    tl.store(pos_ptr + offs_m, pos, mask=in_m)


@triton.jit
def _supcon_bwd_kernel(
    z_ptr, lab_ptr, card_ptr, lse_ptr, a_ptr, dz_ptr,
    N, D, C, s_zn, s_zd, s_lr, s_lc, scale, n_bucket,
    JACCARD: tl.constexpr, SINGLE_K: tl.constexpr, CAST_FP32: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_out = tl.program_id(1) * BLOCK_K + offs_k  # the columns of dz this program writes
    in_m, in_out = offs_m < N, offs_out < D
    zi = _load_tile(z_ptr, offs_m, in_m, offs_k, offs_k < D, s_zn, s_zd, CAST_FP32) if SINGLE_K else 0.0
    a_i = tl.load(a_ptr + offs_m, mask=in_m, other=0.0)
    has_i = a_i > 0
    lse_i = tl.where(has_i, tl.load(lse_ptr + offs_m, mask=in_m, other=0.0), 0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        a_j = tl.load(a_ptr + offs_n, mask=in_n, other=0.0)
        has_j = a_j > 0
        lse_j = tl.where(has_j, tl.load(lse_ptr + offs_n, mask=in_n, other=0.0), 0.0)
        valid = in_m[:, None] & in_n[None, :] & (offs_m[:, None] != offs_n[None, :])
        # A_IJ built up in one tile: the weights term first, then the two softmax terms of the Gram tile
        w = _weights_tile(lab_ptr, card_ptr, offs_m, offs_n, in_m, in_n, C, s_lr, s_lc, JACCARD, CAST_FP32,
                          BLOCK_C)  # fmt: skip
        coef = tl.where(valid, -(a_i[:, None] + a_j[None, :]) * w, 0.0)
        gram, zj = _gram_tile(z_ptr, zi, offs_m, in_m, offs_n, in_n, D, s_zn, s_zd, SINGLE_K, CAST_FP32, DOT,
                              BLOCK_K)  # fmt: skip
        s = gram * scale
        coef += tl.where(valid & has_i[:, None], tl.exp2(s - lse_i[:, None]), 0.0)
        coef += tl.where(valid & has_j[None, :], tl.exp2(s - lse_j[None, :]), 0.0)
        if not SINGLE_K:  # this program's columns of z_J
            zj = _load_tile(z_ptr, offs_n, in_n, offs_out, in_out, s_zn, s_zd, CAST_FP32)
        acc += _dot(coef.to(zj.dtype), zj, DOT)
    tl.store(dz_ptr + offs_m[:, None] * D + offs_out[None, :], acc, mask=in_m[:, None] & in_out[None, :])


# --------------------------------------------------------------------------- 3. launchers


def _label_args(labels: torch.Tensor, positives: str) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
    """(labels for the kernel, per-row label counts, C, row stride, column stride). Class ids go in as
    int32: half the registers of int64 in every tile's comparison."""
    if positives == "class":
        lab = labels.to(torch.int32)
        return lab, lab, 1, lab.stride(0), 0
    lab = labels.view(torch.uint8) if labels.dtype == torch.bool else labels
    card = lab.to(torch.float32).sum(1)
    return lab, card, lab.shape[1], lab.stride(0), lab.stride(1)


# fp32 inputs on the GPU: three TF32 products per tile (hi*hi + hi*lo + lo*hi), which keep fp32's
# accuracy on the tensor cores (tests/test_supcon_kernel.py measures the choice against one TF32
# product and against bf16 operands); the interpreter computes exactly ("ieee").
FP32_DOT = "tf32x3"
# (the widest D one tile holds whole, the slice width for a wider D): a tile that streams D slice by
# slice keeps both operands' pipelines in registers, so its slices are narrower
SLICES = {"native": (128, 64), "tf32x3": (64, 32), "ieee": (64, 64)}
# (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries on the GPU, once per (D, C, dtypes, N's
# power of two), by pass, dot precision and whether D fits one slice. Every one compiles for sm_90
# without spilling registers in both label modes with Triton 3.6 and 3.8 (benchmarks/kernel_resources.py
# lists them; tests/test_kernel_resources.py checks the first of each). The backward has no 128-row
# tile: with Jaccard labels it needs 255 registers and spills under Triton 3.6.
_NATIVE_WHOLE = [(64, 64, 8, 2), (64, 32, 4, 2)]
GPU_TILES = {
    ("fwd", "native", True): _NATIVE_WHOLE + [(128, 64, 8, 2)],
    ("bwd", "native", True): _NATIVE_WHOLE,
    **{(p, "native", False): [(64, 64, 8, 2), (64, 64, 8, 1)] for p in ("fwd", "bwd")},
    **{(p, "tf32x3", True): [(64, 32, 4, 2)] for p in ("fwd", "bwd")},
    **{(p, "tf32x3", False): [(64, 32, 8, 2), (64, 16, 4, 2)] for p in ("fwd", "bwd")},
}
INTERPRETER_TILE = 128  # the interpreter pays per program iteration: big tiles


def plan(d: int, c: int, dtype: torch.dtype, interpret: bool | None = None) -> dict:
    """The compile-time parameters both kernels get for embeddings of width `d` in `dtype` and `c`
    label columns (1 for class ids): dot precision, whether D fits one slice, the slice, the label slice."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1" if interpret is None else interpret
    if interpret:
        dot = "ieee"
    elif dtype in (torch.float16, torch.bfloat16):
        dot = "native"
    else:
        dot = FP32_DOT
    whole, slice_width = SLICES[dot]
    single = d <= whole
    return dict(SINGLE_K=single, CAST_FP32=interpret, DOT=dot,
                BLOCK_K=max(16, triton.next_power_of_2(d)) if single else slice_width,
                BLOCK_C=16)  # fmt: skip  (label columns per step of the Jaccard tile: few registers)


_TUNED: dict = {}


def tile_group(kernel, meta: dict) -> tuple[str, str, bool]:
    """The GPU_TILES key of `kernel` launched with `plan`'s `meta`."""
    return ("bwd" if kernel is _supcon_bwd_kernel else "fwd", meta["DOT"], meta["SINGLE_K"])


def _launcher(kernel, meta: dict):
    """The kernel as launched: autotuned over its GPU_TILES on the GPU, one fixed tile in the
    interpreter. The tuning key has N only by its power of two, so a new batch size does not retune."""
    if meta["CAST_FP32"]:  # the interpreter
        return lambda grid, *args, **kw: kernel[grid](*args, **kw, BLOCK_M=INTERPRETER_TILE,
                                                      BLOCK_N=INTERPRETER_TILE)  # fmt: skip
    group = tile_group(kernel, meta)
    if group not in _TUNED:
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
                   for m, n, w, st in GPU_TILES[group]]  # fmt: skip
        _TUNED[group] = triton.autotune(configs=configs, key=["n_bucket", "D", "C"])(kernel)
    tuned = _TUNED[group]
    return lambda grid, *args, **kw: tuned[grid](*args, **kw)


def _row_stats_triton(z, labels, positives, inv_t):
    """Per row: natural-log LSE over j != i, sum_j W_ij, sum_j W_ij s_ij."""
    n, d = z.shape
    lab, card, C, s_lr, s_lc = _label_args(labels, positives)
    lse, wsum, pos = (torch.empty(n, device=z.device, dtype=torch.float32) for _ in range(3))
    meta = plan(d, C, z.dtype)
    grid = lambda m: (triton.cdiv(n, m["BLOCK_M"]),)  # noqa: E731
    _launcher(_supcon_fwd_kernel, meta)(
        grid, z, lab, card, lse, wsum, pos, n, d, C, *z.stride(), s_lr, s_lc, inv_t * LOG2E,
        triton.next_power_of_2(n), JACCARD=positives == "jaccard", **meta,
    )  # fmt: skip
    return lse * LN2, wsum, pos * LN2  # base 2 in the kernel


def _row_grads_triton(z, labels, positives, inv_t, lse, a):
    n, d = z.shape
    lab, card, C, s_lr, s_lc = _label_args(labels, positives)
    dz = torch.empty(z.shape, device=z.device, dtype=torch.float32)
    meta = plan(d, C, z.dtype)
    grid = lambda m: (triton.cdiv(n, m["BLOCK_M"]), triton.cdiv(d, m["BLOCK_K"]))  # noqa: E731
    _launcher(_supcon_bwd_kernel, meta)(
        grid, z, lab, card, lse * LOG2E, a, dz, n, d, C, *z.stride(), s_lr, s_lc, inv_t * LOG2E,
        triton.next_power_of_2(n), JACCARD=positives == "jaccard", **meta,
    )  # fmt: skip
    return dz


def _chunk_rows(n: int, budget: int = 1 << 21) -> int:
    """Rows per block so that one [rows, N] fp32 temporary stays near `budget` elements (8 MB)."""
    return max(1, min(n, budget // max(n, 1)))


def _scores(x: torch.Tensor, i0: int, i1: int, inv_t: float) -> torch.Tensor:
    return (x[i0:i1] @ x.T) * inv_t


def _row_stats_chunked(z, labels, positives, inv_t):
    """The forward in row blocks with plain torch: O(rows x N) memory instead of N x N."""
    x = z.to(torch.promote_types(z.dtype, torch.float32))
    n = x.shape[0]
    lse, wsum, pos = (torch.empty(n, device=x.device, dtype=x.dtype) for _ in range(3))
    step = _chunk_rows(n)
    for i0 in range(0, n, step):
        i1 = min(i0 + step, n)
        rows = torch.arange(i1 - i0, device=x.device)
        s = _scores(x, i0, i1, inv_t)
        w = _pair_weights(labels[i0:i1], labels, positives, x.dtype)
        w[rows, rows + i0] = 0
        wsum[i0:i1] = w.sum(1)
        pos[i0:i1] = (w * s).sum(1)
        s[rows, rows + i0] = float("-inf")
        lse[i0:i1] = torch.logsumexp(s, dim=1)
    return lse, wsum, pos


def _row_grads_chunked(z, labels, positives, inv_t, lse, a):
    x = z.to(torch.promote_types(z.dtype, torch.float32))
    n = x.shape[0]
    has = a > 0
    lse_safe = torch.where(has, lse, torch.zeros_like(lse))
    dz = torch.empty_like(x)
    step = _chunk_rows(n)
    for i0 in range(0, n, step):
        i1 = min(i0 + step, n)
        rows = torch.arange(i1 - i0, device=x.device)
        s = _scores(x, i0, i1, inv_t)
        coef = torch.exp(s - lse_safe[i0:i1, None]) * has[i0:i1, None]
        coef += torch.exp(s - lse_safe[None, :]) * has[None, :]
        w = _pair_weights(labels[i0:i1], labels, positives, x.dtype)
        coef -= (a[i0:i1, None] + a[None, :]) * w
        coef[rows, rows + i0] = 0
        dz[i0:i1] = coef @ x
    return dz


# --------------------------------------------------------------------------- 4. autograd


class _SupConFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, labels, temperature, base_temperature, positives, use_kernel):
        inv_t = 1.0 / temperature
        stats = _row_stats_triton if use_kernel else _row_stats_chunked
        lse, wsum, pos = stats(z, labels, positives, inv_t)
        has = wsum > 0
        a = torch.where(has, 1 / torch.where(has, wsum, torch.ones_like(wsum)), torch.zeros_like(wsum))
        n = z.shape[0]
        c = temperature / base_temperature
        loss = (c / n) * (torch.where(has, lse, torch.zeros_like(lse)) - a * pos).sum()
        ctx.save_for_backward(z, labels, lse, a)
        ctx.options = (inv_t, positives, use_kernel, c / (n * temperature))
        return loss.float()

    @staticmethod
    def backward(ctx, grad_output):
        z, labels, lse, a = ctx.saved_tensors
        inv_t, positives, use_kernel, factor = ctx.options
        grads = _row_grads_triton if use_kernel else _row_grads_chunked
        dz = grads(z, labels, positives, inv_t, lse, a)
        return (dz * (grad_output * factor)).to(z.dtype), None, None, None, None, None


# --------------------------------------------------------------------------- 5. front


def _check(
    z: torch.Tensor, labels: torch.Tensor, temperature: float, base_temperature: float, positives: str
):
    if positives not in MODES:
        raise ValueError(f"positives must be one of {MODES}, got {positives!r}")
    if z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"z must be a floating-point [N, D] tensor, got {tuple(z.shape)} {z.dtype}")
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(f"temperatures must be positive, got {temperature} and {base_temperature}")
    if positives == "class" and (labels.shape != (z.shape[0],) or labels.is_floating_point()):
        raise ValueError(f"positives='class' needs integer labels of shape [{z.shape[0]}], got "
                         f"{tuple(labels.shape)} {labels.dtype}")  # fmt: skip
    if positives == "jaccard" and (labels.dim() != 2 or labels.shape[0] != z.shape[0]):
        raise ValueError(f"positives='jaccard' needs multi-hot labels of shape [{z.shape[0]}, C], got "
                         f"{tuple(labels.shape)}")  # fmt: skip


def supcon_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.2,
    base_temperature: float = 0.2,
    positives: str = "class",
    impl: str = "auto",
) -> torch.Tensor:
    """SupCon over L2-normalised `z` [N, D]; fp32 scalar. impl: "triton" (CUDA, or CPU under
    TRITON_INTERPRET=1), "torch" (chunked, flat memory), "auto" (Triton on CUDA, chunked torch on CPU
    and for float64, which the kernels, computing in fp32, refuse)."""
    _check(z, labels, temperature, base_temperature, positives)
    if z.shape[0] == 0:
        return z.sum().float() * 0
    use_kernel = use_triton(z.device, impl, z.dtype)
    if use_kernel and z.dtype == torch.float32 and torch.is_autocast_enabled(z.device.type):
        # as autocast runs a matmul: the Gram products in its dtype on the tensor cores, accumulated in
        # fp32 (what the torch path's `@` does under autocast too); the gradient returns through the cast
        z = z.to(torch.get_autocast_dtype(z.device.type))
    return _SupConFunction.apply(z, labels, temperature, base_temperature, positives, use_kernel)


class SupConLoss(torch.nn.Module):
    """Module front of `supcon_loss`; defaults are MulCon's (T = T_base = 0.2, label-level positives)."""

    def __init__(self, temperature: float = 0.2, base_temperature: float = 0.2, positives: str = "class",
                 impl: str = "auto"):  # fmt: skip
        super().__init__()
        if positives not in MODES:
            raise ValueError(f"positives must be one of {MODES}, got {positives!r}")
        self.options = dict(temperature=temperature, base_temperature=base_temperature, positives=positives,
                            impl=impl)  # fmt: skip

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(z, labels, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items())
