"""fastmlic.kernels.asl_loss: Triton (under the interpreter) and torch paths against the float64 reference."""

import pytest
import torch
from conftest import DTYPES, INTERPRETED, assert_close, needs_interpreter
from fastmlic.kernels import AsymmetricLoss, asl_loss, asl_reference

SHAPES = [(1, 1), (7, 13), (41, 401), (64, 500), (3, 9605)]
IMPLS = [INTERPRETED, "torch"]


CLIPS = (0.05, 0.1)


def make_inputs(shape, dtype, gen, soft=False, spread=3.0):
    """Logits around the realistic negative mean, ~20% positives (or soft targets), fresh per test.

    ASL's gradient jumps where p = clip (the clamp's mask): fp32 and fp64 can put a cell within
    rounding distance of that point on different sides, so logits keep a 1e-6 margin from it.
    """
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * spread - 1
    for clip in CLIPS:
        x = torch.where((torch.sigmoid(x) - clip).abs() < 1e-6, x + 1e-3, x)
    x = x.to(dtype)
    y = torch.rand(shape, generator=gen) if soft else torch.rand(shape, generator=gen) < 0.2
    return x, y


@pytest.fixture
def gen(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def check(x, y, *, impl, grad_scale=1.0, ignore=None, **options):
    """Loss and gradient of asl_loss on `x` against the reference on the same (rounded) values in float64."""
    xk = x.detach().clone().requires_grad_()
    loss = asl_loss(xk, y, impl=impl, ignore=ignore, **options)
    assert loss.dtype == torch.float32
    grad_out = torch.full_like(loss, grad_scale) if loss.dim() == 0 else torch.randn_like(loss) * grad_scale
    loss.backward(grad_out)
    x64 = x.detach().double().requires_grad_()
    ref = asl_reference(x64, y, ignore=ignore, **options)
    (ref_grad,) = torch.autograd.grad(ref, x64, grad_out.double())
    assert_close(loss, ref, torch.float32, "loss")
    assert xk.grad.dtype == x.dtype
    # a cell's gradient is O(1) times grad_output (and the per-cell factor of the reduction); the
    # non-detached one subtracts terms of that size, so its atol scales with that unit, not with itself
    per_cell = options.get("scale", 1.0)
    if options.get("reduction") == "mean":
        kept = x.numel() if ignore is None else int((~ignore.bool()).sum())
        per_cell /= max(kept, 1)
    unit = float(grad_out.abs().max()) * per_cell if grad_out.numel() else 0.0
    assert_close(xk.grad, ref_grad, x.dtype, "grad", magnitude=unit)
    return loss, xk.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("detach_focal", [True, False])
def test_matches_reference(impl, shape, dtype, detach_focal, gen):
    x, y = make_inputs(shape, dtype, gen)
    check(x, y, impl=impl, detach_focal=detach_focal, grad_scale=1.7, gamma_pos=1.0, gamma_neg=4.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("detach_focal", [True, False])
@pytest.mark.parametrize("gammas_clip", [(0.0, 4.0, 0.05), (1.0, 2.0, 0.0), (2.0, 3.0, 0.1), (0.0, 0.0, 0.0)])
def test_soft_targets_and_other_settings(impl, detach_focal, gammas_clip, gen):
    gp, gn, clip = gammas_clip
    x, y = make_inputs((41, 401), torch.float32, gen, soft=True)
    check(x, y, impl=impl, detach_focal=detach_focal, gamma_pos=gp, gamma_neg=gn, clip=clip, grad_scale=0.3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction, scale", [("sum", 1.0), ("mean", 1000.0), ("none", 2.5), ("mean", 1.0)])
def test_reductions_and_ignore(impl, reduction, scale, gen):
    x, y = make_inputs((64, 500), torch.float32, gen)
    ignore = torch.rand(x.shape, generator=gen) < 0.1
    loss, grad = check(x, y, impl=impl, ignore=ignore, reduction=reduction, scale=scale, detach_focal=False)
    assert (grad[ignore] == 0).all()
    assert (grad[~ignore] != 0).any()
    if reduction == "none":
        assert loss.shape == x.shape and (loss[ignore] == 0).all()
    # ignoring cells is the same as dropping them: compare with the loss over the kept cells only
    kept = asl_reference(
        x[~ignore], y[~ignore], reduction=reduction if reduction != "none" else "sum", scale=scale
    )
    if reduction != "none":
        assert_close(loss, kept, torch.float32, "ignored cells removed")


@pytest.mark.parametrize("impl", IMPLS)
def test_normalised_form_of_query2label(impl, gen):
    x, y = make_inputs((7, 13), torch.float32, gen)
    total = asl_loss(x, y, impl=impl, reduction="sum", gamma_pos=0, gamma_neg=2, clip=0)
    normalised = asl_loss(x, y, impl=impl, reduction="mean", scale=1000, gamma_pos=0, gamma_neg=2, clip=0)
    assert_close(normalised, total / (7 * 13) * 1000, torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(impl, dtype, gen):
    x, y = make_inputs((50, 82), dtype, gen)
    xt, yt = x.t(), y.t()  # transposed views: strides (1, 82)
    ignore = (torch.rand(82, 50, generator=gen) < 0.1).to(torch.uint8)
    assert not xt.is_contiguous()
    check(xt, yt, impl=impl, ignore=ignore, grad_scale=0.5, detach_focal=False)
    check(x[:, ::3], y[:, ::3].to(torch.uint8), impl=impl)  # strided columns, uint8 targets


@pytest.mark.parametrize("impl", IMPLS)
def test_extreme_logits_stay_finite(impl, gen):
    x = torch.tensor([[-100.0, 100.0, -100.0, 100.0, 0.0, -18.5, -18.3, 40.0]])
    y = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    for detach in (True, False):
        loss, grad = check(x, y, impl=impl, detach_focal=detach, gamma_pos=1.0, gamma_neg=4.0)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        # p < eps: the clamp cuts the log's gradient; only the focal weight's (~1e-43) can remain
        assert grad[0, 0] == 0 if detach else abs(grad[0, 0]) < 1e-30


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_and_single_class(impl, gen):
    x = torch.empty(0, 80, requires_grad=True)
    for reduction in ("sum", "mean"):
        loss = asl_loss(x, torch.empty(0, 80, dtype=torch.bool), impl=impl, reduction=reduction)
        assert loss.item() == 0.0
        loss.backward()
        assert x.grad.shape == (0, 80)
    x1, y1 = make_inputs((9, 1), torch.float32, gen)
    check(x1, y1, impl=impl, detach_focal=False)


@needs_interpreter
def test_module_matches_functional_and_validates(gen):
    x, y = make_inputs((7, 13), torch.float32, gen)
    module = AsymmetricLoss(gamma_pos=0, gamma_neg=4, clip=0.05, reduction="mean", impl="triton")
    assert "gamma_neg=4" in repr(module)
    expected = asl_loss(x, y, gamma_pos=0, gamma_neg=4, clip=0.05, reduction="mean", impl="triton")
    assert torch.equal(module(x, y), expected)
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="avg")
    with pytest.raises(ValueError, match="targets shape"):
        asl_loss(x, y[:, :5])
    with pytest.raises(ValueError, match=r"targets\.detach"):
        asl_loss(x, y.float().requires_grad_())
    with pytest.raises(TypeError, match="ignore must be bool or uint8"):
        asl_loss(x, y, ignore=torch.zeros(7, 13))


@needs_interpreter
def test_no_grad_inputs_skip_the_gradient_and_keep_grad_mode(gen):
    x, y = make_inputs((7, 13), torch.float32, gen)
    with torch.no_grad():
        loss = asl_loss(x, y, impl="triton")
        ref = asl_reference(x, y, detach_focal=True)
        assert not torch.is_grad_enabled()  # the reference ASL re-enabled grad here; we must not
    assert_close(loss, ref.double(), torch.float32)


def test_auto_uses_torch_on_cpu(monkeypatch, gen):
    import fastmlic.kernels.asl as asl

    x, y = make_inputs((7, 13), torch.float32, gen)
    monkeypatch.setattr(
        asl._ASLFunction, "apply", lambda *a: pytest.fail("Triton path used for a CPU tensor")
    )
    asl_loss(x, y)  # impl="auto"


def test_float64_is_refused_by_the_kernel_and_kept_by_the_torch_path(gen):
    x, y = make_inputs((7, 13), torch.float64, gen)
    with pytest.raises(TypeError, match="float64 runs in float64 with impl='torch'"):
        asl_loss(x, y, impl="triton")
    xk = x.clone().requires_grad_()
    asl_loss(xk, y).backward()  # auto: the reference, in float64
    assert xk.grad.dtype == torch.float64
    x64 = x.clone().requires_grad_()
    asl_reference(x64, y).backward()
    assert torch.equal(xk.grad, x64.grad)
