"""The trainer's parts on their own: losses, parameter groups, schedules and EMA arithmetic."""

import math

import pytest
import torch
import torch.nn.functional as F
from fastmlic.kernels import asl_reference
from timm.utils import ModelEmaV3

from fastmlic.config import LossConfig, ModelConfig, OptimConfig
from fastmlic.losses import build_loss
from fastmlic.models import build_model
from fastmlic.optim import build_optimizer, build_scheduler


def test_bce_and_asl_leave_ignored_cells_out(rng):
    logits = torch.from_numpy(rng.normal(size=(6, 5))).float()
    targets = torch.from_numpy(rng.random((6, 5)) < 0.4).float()
    ignore = torch.from_numpy(rng.random((6, 5)) < 0.3)
    bce = build_loss(LossConfig(name="bce", reduction="mean"))
    expected = F.binary_cross_entropy_with_logits(logits[~ignore], targets[~ignore])
    torch.testing.assert_close(bce(logits, targets, ignore), expected)
    asl = build_loss(LossConfig(name="asl", gamma_pos=0, gamma_neg=4, clip=0.05))
    keep = (~ignore).float()
    ref = asl_reference(logits, targets, gamma_pos=0, gamma_neg=4, clip=0.05, reduction="none")
    torch.testing.assert_close(asl(logits, targets, ignore), (ref * keep).sum())
    no_ignore = build_loss(LossConfig(name="asl", gamma_pos=0, use_ignore=False))
    torch.testing.assert_close(no_ignore(logits, targets, ignore), ref.sum())


def test_no_weight_decay_on_biases_and_norms_and_a_backbone_lr_factor():
    model = build_model(ModelConfig(backbone="test_resnet", head="label_attention", embed_dim=16, heads=2), 3)
    cfg = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, backbone_lr_factor=0.1)
    opt = build_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            assert group["weight_decay"] == (0.05 if p.ndim > 1 else 0.0), name
            assert group["lr"] == pytest.approx(1e-4 if name.startswith("backbone.") else 1e-3), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_the_fused_step_on_the_cpu_is_torchs_update(name):
    """The trainer's optimiser takes torch's fused kernel on the CPU (its default is a loop over tensors,
    8x slower for Adam on ResNet-18); three steps of it give the loop's parameters."""
    torch.manual_seed(0)
    models = [build_model(ModelConfig(backbone="test_resnet"), 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=1e-4, momentum=0.9)
    fused = build_optimizer(models[0], cfg)
    assert fused.defaults["fused"] is True
    twin = dict(zip(map(id, models[0].parameters()), models[1].parameters(), strict=True))
    loop = type(fused)([dict(g, params=[twin[id(p)] for p in g["params"]], fused=None, foreach=False)
                        for g in fused.param_groups])  # fmt: skip
    for _ in range(3):  # the same gradients into both: a difference is the update's, not the network's
        for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def learning_rates(cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> list[float]:
    """The learning rate at every step of a schedule, from lr 1.0."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, total_steps, steps_per_epoch)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    lrs = learning_rates(OptimConfig(schedule="cosine", lr=1.0, warmup_epochs=1), 30, 10)
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 20)))


def test_step_schedule_decays_at_epoch_boundaries():
    lrs = learning_rates(OptimConfig(schedule="step", lr=1.0, step_epochs=2, step_gamma=0.1), 60, 10)
    assert lrs[0] == lrs[19] == 1.0
    assert lrs[20] == pytest.approx(0.1) and lrs[39] == pytest.approx(0.1) and lrs[40] == pytest.approx(0.01)


def test_poly_schedule_falls_as_a_power_of_the_remaining_steps():
    lrs = learning_rates(OptimConfig(schedule="poly", lr=1.0, poly_power=0.9), 40, 10)
    assert lrs[0] == 1.0
    assert lrs[10] == pytest.approx(0.75**0.9) and lrs[39] == pytest.approx((1 / 40) ** 0.9)


def test_ema_arithmetic_with_and_without_warmup():
    model = torch.nn.Linear(3, 2)
    ema = ModelEmaV3(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1)  # the first update copies (decay 0 at step 1)
    torch.testing.assert_close(ema.module.weight, w0 + 1)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=2)
    torch.testing.assert_close(ema.module.weight, 0.9 * (w0 + 1) + 0.1 * (w0 + 2))
    warm = ModelEmaV3(model, decay=0.9999, use_warmup=True)
    assert warm.get_decay(11) == pytest.approx(1 - (1 + 10) ** (-2 / 3))
    assert warm.get_decay(10**9) == pytest.approx(0.9999)
