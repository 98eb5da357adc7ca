"""Asymmetric loss (ASL, Ridnik et al., ICCV 2021) as one fused Triton launch, beside its PyTorch reference.

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


# --------------------------------------------------------------------------- 2. kernel
#
# One program handles BLOCK cells of the [R, C] view (any strides). It writes the loss partial sum of
# its cells and, when the input needs a gradient, dl/dx per cell, so the backward is one multiply.
# Closed forms (verified against autograd in ../shared notes; masks follow torch's clamp backward):
#   I_eps = [p >= eps]    I_c = [1 - p + clip <= 1] (1 without clip)    I_q = [q >= eps]
#   dce = y (1 - p) I_eps - (1 - y) p (1 - p) I_c I_q / q
#   db  = -y p (1 - p) + (1 - y) p (1 - p) I_c
#   detached:      dl/dx = -w dce
#   not detached:  dl/dx = -(w dce + ce g b^(g-1) db)    (the second term is 0 where g == 0)
# pow is exp2(g log2 b) with torch's edge cases: b^0 = 1, 0^g = 0 for g > 0, 0^g = inf for g < 0.


@triton.jit
def _pow(b, g):
    safe = tl.where(b > 0, b, 1.0)
    powered = tl.exp2(g * tl.log2(safe))
    at_zero = tl.where(g > 0, 0.0, float("inf"))
    return tl.where(g == 0, 1.0, tl.where(b > 0, powered, at_zero))


@triton.jit
def _asl_fwd_kernel(
    x_ptr, y_ptr, ign_ptr, loss_ptr, partial_ptr, dx_ptr,
    n_cells, C,
    sx_r, sx_c, sy_r, sy_c, si_r, si_c,
    gamma_pos, gamma_neg, clip, eps,
    USE_CLIP: tl.constexpr, HAS_IGNORE: tl.constexpr, DETACH: tl.constexpr,
    WRITE_GRAD: tl.constexpr, WRITE_LOSS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_cells
    r = offs // C
    c = offs % C
    x = tl.load(x_ptr + r * sx_r + c * sx_c, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + r * sy_r + c * sy_c, mask=inside, other=0).to(tl.float32)
    keep = inside
    if HAS_IGNORE:
        ignored = tl.load(ign_ptr + r * si_r + c * si_c, mask=inside, other=0)
        keep = keep & (ignored == 0)

    z = tl.exp(-tl.abs(x))  # never overflows: sigmoid from exp(-|x|)
    p = tl.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
    one_minus_p = 1.0 - p
    if USE_CLIP:
        shifted = one_minus_p + clip
        q = tl.minimum(shifted, 1.0)
        i_c = (shifted <= 1.0).to(tl.float32)
    else:
        q = one_minus_p
        i_c = 1.0
    ce = y * tl.log(tl.maximum(p, eps)) + (1.0 - y) * tl.log(tl.maximum(q, eps))
    b = 1.0 - p * y - q * (1.0 - y)
    g = gamma_pos * y + gamma_neg * (1.0 - y)
    w = _pow(b, g)
    loss = tl.where(keep, -ce * w, 0.0)
    tl.store(partial_ptr + pid, tl.sum(loss, axis=0))
    if WRITE_LOSS:
        tl.store(loss_ptr + offs, loss, mask=inside)
    if WRITE_GRAD:
        i_eps = (p >= eps).to(tl.float32)
        i_q = (q >= eps).to(tl.float32)
        dp = p * one_minus_p
        dce = y * one_minus_p * i_eps - (1.0 - y) * dp * i_c * i_q / tl.maximum(q, eps)
        grad = -w * dce
        if not DETACH:
            db = -y * dp + (1.0 - y) * dp * i_c
            grad -= tl.where(g == 0, 0.0, ce * g * _pow(b, g - 1.0) * db)
        tl.store(dx_ptr + offs, tl.where(keep, grad, 0.0).to(dx_ptr.dtype.element_ty), mask=inside)


# --------------------------------------------------------------------------- 3. launcher


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1) if t.dim() == 1 else t.reshape(-1, t.shape[-1])


def _asl_forward(
    logits, targets, ignore, gamma_pos, gamma_neg, clip, eps, detach_focal, write_grad, write_loss
):
    """Launch the kernel: (per-program partial sums, per-cell loss or None, per-cell dl/dx or None)."""
    x, y = _as_2d(logits), _as_2d(targets)
    if y.dtype == torch.bool:
        y = y.view(torch.uint8)
    ign = None if ignore is None else _as_2d(ignore)
    if ign is not None and ign.dtype == torch.bool:
        ign = ign.view(torch.uint8)
    n_cells, C = x.numel(), x.shape[-1]
    # the interpreter runs each program in numpy: fewer, larger blocks are much faster there
    block = 8192 if os.environ.get("TRITON_INTERPRET") == "1" else 1024
    grid = (max(triton.cdiv(n_cells, block), 1),)
    partials = torch.zeros(grid[0], device=x.device, dtype=torch.float32)
    loss = torch.empty(logits.shape, device=x.device, dtype=torch.float32) if write_loss else None
    dx = torch.empty(logits.shape, device=x.device, dtype=logits.dtype) if write_grad else None
    if n_cells:
        si = (0, 0) if ign is None else ign.stride()
        _asl_fwd_kernel[grid](
            x, y, ign if ign is not None else x, loss if write_loss else partials, partials,
            dx if write_grad else partials, n_cells, C, *x.stride(), *y.stride(), *si,
            float(gamma_pos), float(gamma_neg), float(clip), float(eps),
            USE_CLIP=clip > 0, HAS_IGNORE=ign is not None, DETACH=detach_focal,
            WRITE_GRAD=write_grad, WRITE_LOSS=write_loss, BLOCK=block, num_warps=4,
        )  # fmt: skip
    return partials, loss, dx


# --------------------------------------------------------------------------- 4. autograd


class _ASLFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, logits, targets, ignore, gamma_pos, gamma_neg, clip, eps, detach_focal, reduction, scale
    ):
        write_loss = reduction == "none"
        partials, loss, dx = _asl_forward(
            logits, targets, ignore, gamma_pos, gamma_neg, clip, eps, detach_focal,
            write_grad=ctx.needs_input_grad[0], write_loss=write_loss,
        )  # fmt: skip
        if reduction == "none":
            out, factor = loss * scale, scale
        else:
            total = partials.sum()
            if reduction == "mean":
                count = torch.tensor(logits.numel(), device=logits.device, dtype=torch.float32)
                if ignore is not None:
                    count = count - ignore.sum()
                factor = scale / count.clamp(min=1)
            else:
                factor = torch.tensor(scale, device=logits.device, dtype=torch.float32)
            out = total * factor
        ctx.reduction = reduction
        ctx.save_for_backward(dx, factor if torch.is_tensor(factor) else None)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_output):
        dx, factor = ctx.saved_tensors
        if dx is None:
            return (None,) * 10
        if ctx.reduction == "none":
            grad = dx * (grad_output * ctx.scale)
        else:
            grad = dx * (grad_output * factor)  # a 0-dim fp32 factor keeps bf16/fp16 math in fp32
        return (grad.to(dx.dtype),) + (None,) * 9


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


def use_triton(device: torch.device, impl: str) -> bool:
    """impl="auto": Triton on CUDA, torch on CPU; "triton" on CPU needs TRITON_INTERPRET=1."""
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "impl='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before importing triton"
        )
    return impl == "triton" or (impl == "auto" and device.type == "cuda")


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
    if not use_triton(logits.device, impl):
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
