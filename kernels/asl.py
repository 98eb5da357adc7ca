"""Asymmetric loss (ASL, Ridnik et al., ICCV 2021): Triton loss and gradient launches beside the reference.

Semantics are those of Alibaba-MIIL/ASL `AsymmetricLoss` (HEAD 8c9e0bd), generalised to soft targets
y in [0, 1] and an ignore mask:

    p = sigmoid(x)                      q = min(1 - p + clip, 1)  (q = 1 - p when clip == 0)
    ce = y log(max(p, eps)) + (1 - y) log(max(q, eps))
    b  = 1 - p y - q (1 - y)            g = gamma_pos y + gamma_neg (1 - y)        w = b^g
    loss = -sum(ce * w) over cells that are not ignored,  then "sum" | "mean" (over those cells) | "none",
           times `scale` (reduction="mean", scale=1000 is the Query2Label / CoCo / SGRE normalised form).

`detach_focal=True` treats w as a constant (the `AsymmetricLoss` default); False differentiates through
it (the `AsymmetricLossOptimized` default). The two give the same loss and different gradients.
1 - p is computed by subtraction, as the reference does.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

REDUCTIONS = ("sum", "mean", "none")


# --------------------------------------------------------------------------- 1. reference


def asl_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma_pos: float = 1.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_focal: bool = True,
    reduction: str = "sum",
    scale: float = 1.0,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """The specification, in plain PyTorch: computes in fp32 (fp64 for fp64 inputs) and returns that dtype."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    y = targets.to(x.dtype)
    p = torch.sigmoid(x)
    q = 1 - p
    if clip > 0:
        q = (q + clip).clamp(max=1)
    ce = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))
    if gamma_pos > 0 or gamma_neg > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal):
            b = 1 - p * y - q * (1 - y)
            w = torch.pow(b, gamma_pos * y + gamma_neg * (1 - y))
        ce = ce * w
    loss = -ce
    keep = None if ignore is None else ~ignore.bool()
    if keep is not None:
        loss = loss * keep
    if reduction == "none":
        return loss * scale
    total = loss.sum()
    if reduction == "mean":
        count = torch.tensor(loss.numel(), device=loss.device) if keep is None else keep.sum()
        total = total / count.clamp(min=1)
    return total * scale


# --------------------------------------------------------------------------- 2. kernels
#
# The forward reads x, y (and the ignore mask) once and writes one loss partial per program (and the
# per-cell loss for reduction="none"); the backward reads them again and writes dl/dx times the
# incoming gradient, which it reads from device memory: no host sync, nothing saved but the inputs,
# and the fewest bytes an autograd op can move (each pass reads its inputs once, the backward writes
# the gradient once). With contiguous inputs (FLAT) a cell's offset is its flat index, so loads are
# vectorised; any other strides go through row and column indices.
# Closed forms (verified against autograd in ../shared notes; masks follow torch's clamp backward):
#   I_eps = [p >= eps]    I_c = [1 - p + clip <= 1] (1 without clip)    I_q = [q >= eps]
#   dce = y (1 - p) I_eps - (1 - y) p (1 - p) I_c I_q / q
#   db  = -y p (1 - p) + (1 - y) p (1 - p) I_c
#   detached:      dl/dx = -w dce
#   not detached:  dl/dx = -(w dce + ce g b^(g-1) db)    (the second term is 0 where g == 0)
# pow is exp2(g log2 b) with torch's edge cases: b^0 = 1, 0^g = 0 for g > 0, 0^g = inf for g < 0.
# Logarithms: on the GPU the hardware's lg2.approx (absolute error about 2^-22): libdevice's precise
# log is some 40 instructions, three of them were most of the forward's work, and the loss stays
# within 1e-5 of float64 even when every cell is an easy positive (tests/test_gpu.py checks it at
# 2e-5); the interpreter has no inline PTX and uses tl.log2 (FAST_LOG=False).

LN2 = tl.constexpr(0.6931471805599453)  # a global a kernel reads must be a constexpr


@triton.jit
def _log2(x, FAST_LOG: tl.constexpr):
    if FAST_LOG:
        out = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                        pack=1)  # fmt: skip
    else:
        out = tl.log2(x)
    return out


@triton.jit
def _pow(b, g, FAST_LOG: tl.constexpr):
    safe = tl.where(b > 0, b, 1.0)
    powered = tl.exp2(g * _log2(safe, FAST_LOG))
    at_zero = tl.where(g > 0, 0.0, float("inf"))
    return tl.where(g == 0, 1.0, tl.where(b > 0, powered, at_zero))


@triton.jit
def _load_cells(x_ptr, y_ptr, ign_ptr, n_cells, C, sx_r, sx_c, sy_r, sy_c, si_r, si_c,
                HAS_IGNORE: tl.constexpr, FLAT: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """This program's cells: their flat offsets, whether they exist, x and y in fp32, and whether each
    counts (exists and is not ignored)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_cells
    if FLAT:
        x_offs, y_offs, i_offs = offs, offs, offs
    else:
        r = offs // C
        c = offs % C
        x_offs, y_offs, i_offs = r * sx_r + c * sx_c, r * sy_r + c * sy_c, r * si_r + c * si_c
    x = tl.load(x_ptr + x_offs, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + y_offs, mask=inside, other=0).to(tl.float32)
    keep = inside
    if HAS_IGNORE:
        keep = keep & (tl.load(ign_ptr + i_offs, mask=inside, other=0) == 0)
    return offs, inside, x, y, keep


@triton.jit
def _terms(x, y, gamma_pos, gamma_neg, clip, eps, USE_CLIP: tl.constexpr, FAST_LOG: tl.constexpr):
    """p, 1 - p, q, I_c, ce, b, g and w = b^g of the header, per cell."""
    z = tl.exp(-tl.abs(x))  # never overflows: sigmoid from exp(-|x|)
    r = 1.0 / (1.0 + z)  # one division per cell: they are the costliest instructions here
    p = tl.where(x >= 0, r, z * r)
    one_minus_p = 1.0 - p
    if USE_CLIP:
        shifted = one_minus_p + clip
        q = tl.minimum(shifted, 1.0)
        i_c = (shifted <= 1.0).to(tl.float32)
    else:
        q = one_minus_p
        i_c = tl.full(x.shape, 1.0, tl.float32)
    ce = LN2 * (y * _log2(tl.maximum(p, eps), FAST_LOG) + (1.0 - y) * _log2(tl.maximum(q, eps), FAST_LOG))
    b = 1.0 - p * y - q * (1.0 - y)
    g = gamma_pos * y + gamma_neg * (1.0 - y)
    return p, one_minus_p, q, i_c, ce, b, g, _pow(b, g, FAST_LOG)


@triton.jit
def _asl_fwd_kernel(
    x_ptr, y_ptr, ign_ptr, loss_ptr, partial_ptr,
    n_cells, C, sx_r, sx_c, sy_r, sy_c, si_r, si_c,
    gamma_pos, gamma_neg, clip, eps,
    USE_CLIP: tl.constexpr, HAS_IGNORE: tl.constexpr, FLAT: tl.constexpr, WRITE_LOSS: tl.constexpr,
    FAST_LOG: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs, inside, x, y, keep = _load_cells(x_ptr, y_ptr, ign_ptr, n_cells, C, sx_r, sx_c, sy_r, sy_c, si_r,
                                           si_c, HAS_IGNORE, FLAT, BLOCK)  # fmt: skip
    _, _, _, _, ce, _, _, w = _terms(x, y, gamma_pos, gamma_neg, clip, eps, USE_CLIP, FAST_LOG)
    loss = tl.where(keep, -ce * w, 0.0)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(loss, axis=0))
    if WRITE_LOSS:
        tl.store(loss_ptr + offs, loss, mask=inside)


@triton.jit
def _asl_bwd_kernel(
    x_ptr, y_ptr, ign_ptr, g_ptr, dx_ptr,
    n_cells, C, sx_r, sx_c, sy_r, sy_c, si_r, si_c,
    gamma_pos, gamma_neg, clip, eps,
    USE_CLIP: tl.constexpr, HAS_IGNORE: tl.constexpr, FLAT: tl.constexpr, DETACH: tl.constexpr,
    PER_CELL: tl.constexpr, FAST_LOG: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dx = dl/dx * G, G one fp32 value (the reduced loss's gradient times its scale) or, PER_CELL,
    one per cell (reduction="none"); dx is contiguous."""
    offs, inside, x, y, keep = _load_cells(x_ptr, y_ptr, ign_ptr, n_cells, C, sx_r, sx_c, sy_r, sy_c, si_r,
                                           si_c, HAS_IGNORE, FLAT, BLOCK)  # fmt: skip
    p, one_minus_p, q, i_c, ce, b, g, w = _terms(x, y, gamma_pos, gamma_neg, clip, eps, USE_CLIP, FAST_LOG)
    i_eps = (p >= eps).to(tl.float32)
    i_q = (q >= eps).to(tl.float32)
    dp = p * one_minus_p
    dce = y * one_minus_p * i_eps - (1.0 - y) * dp * i_c * i_q / tl.maximum(q, eps)
    grad = -w * dce
    if not DETACH:
        db = -y * dp + (1.0 - y) * dp * i_c
        grad -= tl.where(g == 0, 0.0, ce * g * _pow(b, g - 1.0, FAST_LOG) * db)
    if PER_CELL:
        grad = grad * tl.load(g_ptr + offs, mask=inside, other=0.0)
    else:
        grad = grad * tl.load(g_ptr)
    tl.store(dx_ptr + offs, tl.where(keep, grad, 0.0).to(dx_ptr.dtype.element_ty), mask=inside)


# --------------------------------------------------------------------------- 3. launchers


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1) if t.dim() == 1 else t.reshape(-1, t.shape[-1])


def _cells(logits, targets, ignore):
    """The [R, C] views the kernels index, uint8 for bool masks, and whether every one is contiguous."""
    x, y = _as_2d(logits), _as_2d(targets)
    if y.dtype == torch.bool:
        y = y.view(torch.uint8)
    ign = None if ignore is None else _as_2d(ignore)
    if ign is not None and ign.dtype == torch.bool:
        ign = ign.view(torch.uint8)
    flat = all(t is None or t.is_contiguous() for t in (x, y, ign))
    return x, y, ign, flat


def launch_config(n_cells: int, interpret: bool | None = None) -> dict:
    """BLOCK, num_warps and FAST_LOG for `n_cells` cells: the interpreter pays per program, so it gets
    big blocks (and tl.log2); on the GPU 16 fp32 cells per thread keep enough bytes in flight on large
    inputs."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1" if interpret is None else interpret
    if interpret:
        return {"BLOCK": 8192, "num_warps": 4, "FAST_LOG": False}
    if n_cells >= 1 << 20:
        return {"BLOCK": 4096, "num_warps": 8, "FAST_LOG": True}
    return {"BLOCK": 1024, "num_warps": 4, "FAST_LOG": True}


def _programs(n_cells: int) -> int:
    """Blocks of the launch over `n_cells` (one loss partial each); at least 1, so a sum has a term."""
    return max(triton.cdiv(n_cells, launch_config(n_cells)["BLOCK"]), 1)


def _launch(kernel, x, y, ign, flat, outputs, options, **meta):
    n_cells, C = x.numel(), x.shape[-1]
    config = launch_config(n_cells)
    grid = (_programs(n_cells),)
    if n_cells:
        gamma_pos, gamma_neg, clip, eps = options
        si = (0, 0) if ign is None else ign.stride()
        kernel[grid](
            x, y, ign if ign is not None else x, *outputs, n_cells, C, *x.stride(), *y.stride(), *si,
            float(gamma_pos), float(gamma_neg), float(clip), float(eps),
            USE_CLIP=clip > 0, HAS_IGNORE=ign is not None, FLAT=flat, **meta, **config,
        )  # fmt: skip


# --------------------------------------------------------------------------- 4. autograd


class _ASLFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, logits, targets, ignore, gamma_pos, gamma_neg, clip, eps, detach_focal, reduction, scale
    ):
        x, y, ign, flat = _cells(logits, targets, ignore)
        options = (gamma_pos, gamma_neg, clip, eps)
        partials = torch.zeros(_programs(x.numel()), device=x.device, dtype=torch.float32)
        per_cell = reduction == "none"
        loss = torch.empty(logits.shape, device=x.device, dtype=torch.float32) if per_cell else None
        _launch(_asl_fwd_kernel, x, y, ign, flat, (loss if loss is not None else partials, partials), options,
                WRITE_LOSS=loss is not None)  # fmt: skip
        # the scale of the reduced loss: a Python number, or a device tensor when the count of cells that
        # are not ignored decides it (reading that count on the host would wait for the GPU)
        factor = scale
        if reduction == "mean" and ignore is not None:
            factor = scale / (logits.numel() - ignore.sum()).clamp(min=1).float()
        elif reduction == "mean":
            factor = scale / max(logits.numel(), 1)
        out = loss * scale if per_cell else partials.sum() * factor
        counted = torch.is_tensor(factor)  # a tensor goes through save_for_backward, a number on ctx
        ctx.save_for_backward(logits, targets, ignore, factor if counted else None)
        ctx.options, ctx.detach, ctx.per_cell = options, detach_focal, per_cell
        ctx.factor = None if counted else factor
        return out

    @staticmethod
    def backward(ctx, grad_output):
        logits, targets, ignore, factor_t = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 10
        factor = factor_t if ctx.factor is None else ctx.factor
        g = (grad_output.float() * factor).contiguous()  # on the device: no sync
        x, y, ign, flat = _cells(logits, targets, ignore)
        dx = torch.empty(logits.shape, device=x.device, dtype=logits.dtype)
        _launch(_asl_bwd_kernel, x, y, ign, flat, (g, dx), ctx.options, DETACH=ctx.detach,
                PER_CELL=ctx.per_cell)  # fmt: skip
        return (dx,) + (None,) * 9


# --------------------------------------------------------------------------- 5. front


def _check(logits: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} differs from logits shape {tuple(logits.shape)}"
        )
    if targets.requires_grad:
        raise ValueError("asl_loss does not differentiate through targets: pass targets.detach()")
    if ignore is not None:
        if ignore.shape != logits.shape:
            raise ValueError(
                f"ignore shape {tuple(ignore.shape)} differs from logits shape {tuple(logits.shape)}"
            )
        if ignore.is_floating_point():
            raise TypeError(f"ignore must be bool or uint8, got {ignore.dtype}")


def use_triton(device: torch.device, impl: str, dtype: torch.dtype = torch.float32) -> bool:
    """impl="auto": Triton on CUDA, torch on CPU and for float64 (the kernels compute in fp32, the torch
    path keeps float64); "triton" on CPU needs TRITON_INTERPRET=1 and refuses float64."""
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if impl == "triton" and dtype == torch.float64:
        raise TypeError("impl='triton' computes in fp32 and takes fp32, bf16 or fp16 inputs; float64 runs "
                        "in float64 with impl='torch' (or 'auto')")  # fmt: skip
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "impl='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before importing triton"
        )
    return impl == "triton" or (impl == "auto" and device.type == "cuda" and dtype != torch.float64)


def asl_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma_pos: float = 1.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_focal: bool = True,
    reduction: str = "sum",
    scale: float = 1.0,
    ignore: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Asymmetric loss of `logits` [..., C] against multi-hot or soft `targets`; fp32 result.

    `ignore` (bool/uint8, same shape) removes cells from loss and gradient; "mean" divides by the
    number of cells that are not ignored.
    """
    _check(logits, targets, ignore, reduction)
    if not use_triton(logits.device, impl, logits.dtype):
        return asl_reference(
            logits, targets, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps,
            detach_focal=detach_focal, reduction=reduction, scale=scale, ignore=ignore,
        ).float()  # fmt: skip
    return _ASLFunction.apply(
        logits, targets, ignore, gamma_pos, gamma_neg, clip, eps, detach_focal, reduction, scale
    )


class AsymmetricLoss(torch.nn.Module):
    """Module front of `asl_loss`; the defaults are those of Alibaba-MIIL/ASL `AsymmetricLoss`."""

    def __init__(
        self,
        gamma_pos: float = 1.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focal: bool = True,
        reduction: str = "sum",
        scale: float = 1.0,
        impl: str = "auto",
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.options = dict(
            gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps,
            detach_focal=detach_focal, reduction=reduction, scale=scale, impl=impl,
        )  # fmt: skip

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None = None):
        return asl_loss(logits, targets, ignore=ignore, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.options.items())
