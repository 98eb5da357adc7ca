"""The kernels compiled on CUDA, against the float64 references, and the training step without a host
sync. Marked `gpu`; skipped where there is no CUDA device (`pytest -m gpu` on a GPU machine runs them,
as `python benchmarks/gpu.py` does)."""

import pytest
import rawdata
import torch
from conftest import DTYPES, assert_close
from fastmlic.kernels import asl_loss, supcon_loss
from test_asl_kernel import SHAPES
from test_asl_kernel import check as asl_check
from test_asl_kernel import make_inputs as asl_inputs
from test_supcon_kernel import SIZES
from test_supcon_kernel import check as supcon_check
from test_supcon_kernel import make_inputs as supcon_inputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]  # fmt: skip
CUDA = "cuda"


@pytest.fixture
def gen(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def on_gpu(*tensors):
    return [t.to(CUDA) for t in tensors]


# --------------------------------------------------------------------------- ASL


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("detach_focal", [True, False])
def test_asl_compiled_matches_the_reference(shape, dtype, detach_focal, gen):
    x, y = on_gpu(*asl_inputs(shape, dtype, gen))
    asl_check(x, y, impl="triton", gamma_pos=1.0, gamma_neg=4.0, clip=0.05, detach_focal=detach_focal,
              grad_scale=-1.3)  # fmt: skip


@pytest.mark.parametrize("reduction, scale", [("sum", 1.0), ("mean", 1000.0), ("none", 2.5)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_asl_compiled_reductions_ignore_and_strides(reduction, scale, contiguous, gen):
    x, y = asl_inputs((96, 81), torch.float32, gen, soft=True)
    ignore = torch.rand(96, 81, generator=gen) < 0.1
    x, y, ignore = on_gpu(x, y, ignore)
    if not contiguous:  # column-major storage: the kernels' strided path
        x, y, ignore = (t.T.contiguous().T for t in (x, y, ignore))
        assert not x.is_contiguous()
    asl_check(x, y, impl="triton", ignore=ignore, reduction=reduction, scale=scale, gamma_pos=0.0,
              gamma_neg=4.0, clip=0.05, detach_focal=False, grad_scale=0.7)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_asl_compiled_at_the_largest_shape(dtype, gen):
    x, y = on_gpu(*asl_inputs((16384, 9605), dtype, gen))  # 157M cells: Open Images' label count
    asl_check(x, y, impl="triton", gamma_pos=0.0, gamma_neg=4.0, clip=0.05, grad_scale=1e-3)


# --------------------------------------------------------------------------- SupCon


@pytest.mark.parametrize("n, d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("positives", ["class", "jaccard"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_supcon_compiled_matches_the_reference(n, d, positives, dtype, gen):
    z, labels = on_gpu(*supcon_inputs(n, d, positives, gen, dtype))
    supcon_check(z, labels, impl="triton", positives=positives, temperature=0.1, base_temperature=0.3,
                 grad_scale=-1.7)  # fmt: skip


@pytest.mark.parametrize("d", [64, 200, 512, 1024])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_supcon_compiled_at_any_width(d, dtype, gen):
    """Wider than one slice in every precision (64 for fp32, 128 for half): streamed in slices."""
    z, labels = on_gpu(*supcon_inputs(2048 + 37, d, "class", gen, dtype, classes=80))
    supcon_check(z, labels, impl="triton", temperature=0.2, grad_scale=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_supcon_compiled_at_n_65536_against_float64_in_flat_memory(dtype, gen):
    n, d = 65536, 128
    z, labels = on_gpu(*supcon_inputs(n, d, "class", gen, dtype, classes=80))
    supcon_loss(z.clone().requires_grad_(), labels, impl="triton").backward()  # autotuning's buffers
    zk = z.clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = supcon_loss(zk, labels, impl="triton")
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 2**30, f"{extra / 2**20:.0f} MB beyond the inputs"  # O(N D), never N x N
    z64 = z.double().requires_grad_()
    ref = supcon_loss(z64, labels, impl="torch")  # the chunked path in float64 (the dense one needs 137 GB)
    ref.backward()
    assert_close(loss, ref, torch.float32, "loss")
    assert_close(zk.grad, z64.grad, dtype, "grad", magnitude=1 / (n * 0.2))


def test_float64_on_cuda_runs_in_float64_with_auto_and_is_refused_by_the_kernels(gen):
    z, labels = on_gpu(*supcon_inputs(100, 16, "class", gen, torch.float64))
    with pytest.raises(TypeError, match="float64"):
        supcon_loss(z, labels, impl="triton")
    zk = z.clone().requires_grad_()
    supcon_loss(zk, labels).backward()
    assert zk.grad.dtype == torch.float64
    x, y = on_gpu(*asl_inputs((8, 9), torch.float64, gen))
    with pytest.raises(TypeError, match="float64"):
        asl_loss(x, y, impl="triton")


# --------------------------------------------------------------------------- no host sync


class SyncsAreErrors:
    """Inside: any operation that makes the CPU wait for the GPU raises (torch's sync debug mode)."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


def test_the_kernels_forward_and_backward_never_wait_for_the_gpu(gen):
    x, y = on_gpu(*asl_inputs((256, 80), torch.bfloat16, gen))
    ignore = (torch.rand(256, 80, generator=gen) < 0.1).to(CUDA)
    z, labels = on_gpu(*supcon_inputs(300, 128, "class", gen, torch.bfloat16))
    cases = {  # name: (the input differentiated, the loss of it)
        "asl sum": (x, lambda v: asl_loss(v, y)),
        "asl mean with ignore": (x, lambda v: asl_loss(v, y, reduction="mean", scale=1000.0, ignore=ignore)),
        "asl none": (x, lambda v: asl_loss(v, y, reduction="none").sum()),
        "supcon bf16": (z, lambda v: supcon_loss(v, labels)),
        "supcon fp32 (tf32x3)": (z.float(), lambda v: supcon_loss(v, labels)),
        "supcon fp32 under autocast": (z.float(), lambda v: _autocast_supcon(v, labels)),
    }
    for name, (value, fn) in cases.items():
        fn(value.clone().requires_grad_()).backward()  # the first call compiles and autotunes: it may sync
        leaf = value.clone().requires_grad_()
        with SyncsAreErrors():
            fn(leaf).backward()
        assert leaf.grad is not None and torch.isfinite(leaf.grad.float()).all(), name


def _autocast_supcon(z, labels):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return supcon_loss(z, labels)


def test_a_training_step_and_the_batch_code_never_wait_for_the_gpu(tmp_path):
    from fastmlic.config import load_config
    from fastmlic.distributed import init_distributed
    from fastmlic.engine import train_step
    from fastmlic.recipes.base import StepContext
    from fastmlic.trainer import Trainer

    shards = rawdata.digits_shards(tmp_path / "shards", 256, 64, 64)
    cfg = load_config("digits", [f"--data.shards={shards}", f"--train.out_dir={tmp_path}", "--train.name=s",
                                 "--data.backend=torch", "--data.workers=2", "--data.batch_size=32",
                                 "--data.image_size=64", "--data.cutout=0.5", "--train.amp=bf16",
                                 "--optim.grad_clip=1.0", "--ema.enabled=true"])  # fmt: skip
    trainer = Trainer(cfg, init_distributed("cuda"))
    loader, parts = trainer.train_loader, trainer.parts
    raw = iter(loader.loader)  # the DataLoader's uint8 batches, before the loader's device-side finish
    ctx = StepContext(step=0, epoch=0, total_steps=10**6, device=trainer.dist.device, amp=trainer.amp,
                      rank=0, world_size=1, ema=parts.ema)  # fmt: skip

    def batch(finish_under_sync_check: bool):
        b = next(raw)
        views = [v.to(CUDA, non_blocking=True) for v in b["views"]]  # as DALI hands them: on the GPU
        targets = b["targets"].to(CUDA, non_blocking=True)
        if not finish_under_sync_check:
            return loader._finish([loader._normalize(v) for v in views], targets, None, b["keys"])
        with SyncsAreErrors():  # normalisation, Cutout, the targets' columns
            return loader._finish([loader._normalize(v) for v in views], targets, None, b["keys"])

    parts.net.train()
    for _ in range(2):  # warm-up: cuDNN's choices, the kernels' compilation and autotuning, lazy state
        train_step(parts, batch(False), ctx)
    for _ in range(3):
        b = batch(True)
        with SyncsAreErrors():
            loss, _ = train_step(parts, b, ctx)
    assert ctx.step == 5 and torch.isfinite(loss)
