"""supcon_loss: Triton (interpreter) and chunked torch paths against the dense float64 reference."""

import gc

import pytest
import torch
import torch.nn.functional as F
from conftest import DTYPES, assert_close
from fastmlic.kernels import SupConLoss, supcon_loss, supcon_reference

from benchmarks.common import peak_memory_bytes

IMPLS = ["triton", "torch"]
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
    """At N = 16,384 the dense reference holds several N x N fp32 matrices (~8 GB); chunking must not."""
    n = 16384
    z, labels = make_inputs(n, 128, "class", gen, classes=80)

    def run(fn):
        zk = z.clone().requires_grad_()
        fn(zk).backward()

    chunked = peak_memory_bytes(lambda: run(lambda x: supcon_loss(x, labels, impl="torch")), "cpu")
    gc.collect()
    dense = peak_memory_bytes(lambda: run(lambda x: supcon_reference(x, labels)), "cpu")
    assert dense > 4 * n * n  # sanity: the dense path really holds N x N fp32 matrices
    assert chunked < dense / 10, f"chunked {chunked / 2**20:.0f} MB vs dense {dense / 2**20:.0f} MB"
