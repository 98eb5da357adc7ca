"""supcon_loss: Triton (interpreter) and chunked torch paths against the dense float64 reference."""

import gc

import pytest
import torch
import torch.nn.functional as F
from conftest import DTYPES, INTERPRETED, assert_close, needs_interpreter
from fastmlic.kernels import SupConLoss, supcon_loss, supcon_reference

from benchmarks.common import peak_memory_bytes

IMPLS = [INTERPRETED, "torch"]
SIZES = [(1, 8), (2, 24), (37, 128), (257, 8), (300, 24), (512, 128)]
TEMPERATURES = [0.07, 0.2, 0.5, 1.0]


@pytest.fixture
def gen(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def make_inputs(n, d, positives, gen, dtype=torch.float32, classes=6):
    z = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    if positives == "class":
        labels = torch.randint(0, classes, (n,), generator=gen)
    else:
        labels = torch.rand(n, 9, generator=gen) < 0.25
    return z, labels


def check(z, labels, *, impl, grad_scale, **options):
    zk = z.detach().clone().requires_grad_()
    loss = supcon_loss(zk, labels, impl=impl, **options)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    (loss * grad_scale).backward()
    z64 = z.detach().double().requires_grad_()
    ref = supcon_reference(z64, labels, **options)
    (ref_grad,) = torch.autograd.grad(ref * grad_scale, z64)
    assert_close(loss, ref, torch.float32, "loss")
    assert zk.grad.dtype == z.dtype and torch.isfinite(zk.grad).all()
    # each row's gradient sums N terms of size ~ 1 / (N T); that is the unit its atol scales with
    unit = abs(grad_scale) / (max(z.shape[0], 1) * options.get("temperature", 0.2))
    assert_close(zk.grad, ref_grad, z.dtype, "grad", magnitude=unit)
    return loss, zk.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n, d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("positives", ["class", "jaccard"])
def test_matches_reference(impl, n, d, positives, gen):
    t = TEMPERATURES[(n + d) % len(TEMPERATURES)]
    z, labels = make_inputs(n, d, positives, gen)
    check(z, labels, impl=impl, positives=positives, temperature=t, base_temperature=0.3, grad_scale=-1.7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("positives", ["class", "jaccard"])
def test_every_dtype(impl, dtype, positives, gen):
    z, labels = make_inputs(257, 24, positives, gen, dtype)
    check(z, labels, impl=impl, positives=positives, temperature=0.1, grad_scale=0.6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("temperature", TEMPERATURES + [0.02])
def test_temperatures(impl, temperature, gen):
    z, labels = make_inputs(130, 24, "class", gen)
    check(z, labels, impl=impl, temperature=temperature, base_temperature=0.07, grad_scale=2.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_anchors_without_positives_count_in_the_mean(impl, gen):
    z, _ = make_inputs(40, 24, "class", gen)
    labels = torch.cat([torch.zeros(20, dtype=torch.long), torch.arange(1, 21)])  # 20 singletons
    loss, _ = check(z, labels, impl=impl, grad_scale=1.3)
    half = supcon_reference(z[:20].double(), labels[:20])  # the 20 anchors that have positives...
    assert half > 0 and loss.item() != pytest.approx(half.item(), rel=1e-3)  # ...but averaged over 40
    alone, grad = check(z, torch.arange(40), impl=impl, grad_scale=1.0)
    assert alone.item() == 0 and (grad == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_all_same_class(impl, gen):
    z, _ = make_inputs(75, 24, "class", gen)
    check(z, torch.full((75,), 3), impl=impl, grad_scale=0.9, temperature=0.5)


@pytest.mark.parametrize("impl", IMPLS)
def test_jaccard_with_one_hot_labels_is_the_class_loss(impl, gen):
    z, labels = make_inputs(90, 24, "class", gen, classes=7)
    one_hot = F.one_hot(labels, 7).to(torch.uint8)
    assert_close(supcon_loss(z, one_hot, positives="jaccard", impl=impl),
                 supcon_loss(z, labels, positives="class", impl=impl).double(), torch.float32)  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_embeddings(impl, gen):
    z, labels = make_inputs(64, 24, "jaccard", gen)
    zt = z.T.contiguous().T  # same values, column-major storage
    assert not zt.is_contiguous()
    check(zt, labels, impl=impl, positives="jaccard", grad_scale=1.1)


@needs_interpreter
def test_validation_and_module(gen):
    z, labels = make_inputs(10, 8, "class", gen)
    with pytest.raises(ValueError, match="integer labels of shape"):
        supcon_loss(z, labels.float())
    with pytest.raises(ValueError, match="multi-hot labels"):
        supcon_loss(z, labels, positives="jaccard")
    with pytest.raises(ValueError, match="temperatures must be positive"):
        supcon_loss(z, labels, temperature=0)
    with pytest.raises(ValueError, match="positives must be"):
        SupConLoss(positives="image")
    module = SupConLoss(temperature=0.3, impl="triton")
    assert torch.equal(module(z, labels), supcon_loss(z, labels, temperature=0.3, impl="triton"))
    assert supcon_loss(torch.empty(0, 8), torch.empty(0, dtype=torch.long)).item() == 0


@pytest.mark.slow
def test_chunked_path_stays_flat_in_memory(gen):
    """At N = 8,192 the dense reference holds several N x N fp32 matrices (~2 GB); chunking must not."""
    n = 8192
    z, labels = make_inputs(n, 128, "class", gen, classes=80)

    def run(fn):
        zk = z.clone().requires_grad_()
        fn(zk).backward()

    chunked = peak_memory_bytes(lambda: run(lambda x: supcon_loss(x, labels, impl="torch")), "cpu")
    gc.collect()
    dense = peak_memory_bytes(lambda: run(lambda x: supcon_reference(x, labels)), "cpu")
    assert dense > 4 * n * n  # sanity: the dense path really holds N x N fp32 matrices
    assert chunked < dense / 10, f"chunked {chunked / 2**20:.0f} MB vs dense {dense / 2**20:.0f} MB"


@pytest.mark.parametrize("impl", IMPLS)
def test_embeddings_wider_than_one_slice(impl, gen):
    # the interpreter's slices are 64 wide: 200 takes four, the last one partial, in both passes
    z, labels = make_inputs(45, 200, "jaccard", gen)
    check(z, labels, impl=impl, positives="jaccard", temperature=0.3, grad_scale=0.8)


def test_float64_runs_in_float64_with_torch_and_is_refused_by_the_kernel(gen):
    from fastmlic.kernels.asl import use_triton

    z, labels = make_inputs(30, 8, "class", gen, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64 runs in float64 with impl='torch'"):
        supcon_loss(z, labels, impl="triton")
    zk = z.clone().requires_grad_()
    supcon_loss(zk, labels).backward()  # auto: the torch path, in float64
    assert zk.grad.dtype == torch.float64
    assert not use_triton(torch.device("cuda"), "auto", torch.float64)  # auto on CUDA too
    assert use_triton(torch.device("cuda"), "auto", torch.bfloat16)


@needs_interpreter
def test_under_autocast_the_kernel_takes_the_autocast_dtype_as_a_matmul_would(gen):
    z, labels = make_inputs(70, 24, "class", gen)
    zk = z.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supcon_loss(zk, labels, impl="triton")
    loss.backward()
    assert zk.grad.dtype == torch.float32  # back through the cast
    expected = supcon_loss(z.bfloat16(), labels, impl="triton")
    assert torch.equal(loss, expected)


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 rounded to TF32 (10 stored mantissa bits) to nearest, ties away: the GPU's cvt.rna.tf32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


def _tf32x3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_hi, b_hi = _tf32(a), _tf32(b)
    a_lo, b_lo = _tf32(a - a_hi), _tf32(b - b_hi)
    return a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)  # TF32 products are exact in fp32


FP32_DOTS = {  # what a GPU kernel's fp32 tile product can be: emulated on the CPU, products in fp32
    "tf32x3": _tf32x3,
    "tf32": lambda a, b: _tf32(a) @ _tf32(b),
    "bf16 operands": lambda a, b: a.bfloat16().float() @ b.bfloat16().float(),
}


def emulated_kernel(z: torch.Tensor, labels: torch.Tensor, dot, temperature: float):
    """The kernels' closed form (header) in fp32, every tile product (the Gram, A @ z) through `dot`."""
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    s = dot(z, z.T) / temperature
    w = ((labels[:, None] == labels[None, :]) & ~eye).float()
    lse = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)
    wsum = w.sum(1)
    a = torch.where(wsum > 0, 1 / wsum.clamp(min=1), 0.0)
    has = (wsum > 0).float()
    loss = (has * lse - a * (w * s).sum(1)).sum() / n
    p = torch.exp(s - lse[:, None]).masked_fill(eye, 0.0)
    coef = has[:, None] * p + has[None, :] * p.T - (a[:, None] + a[None, :]) * w
    return loss, dot(coef, z) / (n * temperature)


def test_tf32x3_is_the_fp32_dot_that_keeps_fp32_accuracy(gen):
    """Why fp32 inputs use tf32x3 on the GPU: of the tensor-core products, only it stays inside the fp32
    tolerances; one TF32 product or bf16 operands miss them by orders of magnitude."""
    t = 0.2
    z, labels = make_inputs(512, 128, "class", gen, classes=40)
    z64 = z.double().requires_grad_()
    ref = supcon_reference(z64, labels, temperature=t, base_temperature=t)
    (ref_grad,) = torch.autograd.grad(ref, z64)
    unit = 1 / (512 * t)
    outcome = {}
    for name, dot in FP32_DOTS.items():
        loss, grad = emulated_kernel(z, labels, dot, t)
        try:
            assert_close(loss, ref, torch.float32, f"{name} loss")
            assert_close(grad, ref_grad, torch.float32, f"{name} grad", magnitude=unit)
            outcome[name] = True
        except AssertionError:
            outcome[name] = False
    assert outcome == {"tf32x3": True, "tf32": False, "bf16 operands": False}
