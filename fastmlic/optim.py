"""Optimizer with "true" weight decay (none on biases and norm weights) and a backbone learning-rate
factor, and the per-step schedule (OneCycle, cosine with linear warm-up,
step decay, or poly)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """`model` (a recipe's trainable module or an MLIC model) says which parameters are the backbone's."""
    backbone = {id(p) for p in model.backbone_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_backbone = id(p) in backbone
        decay = p.ndim > 1 and not name.endswith(".bias")  # 1-D: biases, norm scales, per-label biases
        groups.setdefault((in_backbone, decay), []).append(p)
    return [
        {
            "params": ps,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr_factor": cfg.backbone_lr_factor if in_backbone else 1.0,
        }  # fmt: skip
        for (in_backbone, decay), ps in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser over `model`'s parameter groups: its own `parameter_groups(cfg)` where it has them (a
    recipe that keeps its method's groups), else `param_groups`."""
    own = getattr(model, "parameter_groups", None)
    groups = own(cfg) if own is not None else param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_factor"]
    kernel = fused_where_supported(groups)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **kernel)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **kernel)
    # Adam's own weight_decay adds wd * w to the gradient (L2), which is what ASL's recipe uses
    return torch.optim.Adam(groups, lr=cfg.lr, **kernel)


FUSED_DEVICES = ("cpu", "cuda")


def fused_where_supported(groups: list[dict]) -> dict:
    """The same update in one fused kernel over all parameters where torch has it for their device. On the
    CPU torch's default is a loop over the tensors: ResNet-18's Adam step took 46 ms that way and 6 ms fused
    on a 2-core EPYC (benchmarks/optimizer_step.py), a sixth of a digits epoch's time."""
    devices = {p.device.type for g in groups for p in g["params"]}
    floating = all(p.is_floating_point() for g in groups for p in g["params"])
    return {"fused": True} if floating and devices and devices <= set(FUSED_DEVICES) else {}


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int
):
    """Stepped once per optimizer step."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=cfg.pct_start,
        )
    if cfg.schedule == "poly":  # DeepLab's, the usual schedule of CAM and segmentation training
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: (1 - min(step, total_steps) / total_steps) ** cfg.poly_power
        )
    if cfg.schedule == "step":  # per iteration, so a decay lands where the epoch-based one does
        period = max(1, round(cfg.step_epochs * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cfg.step_gamma ** (step // period))
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
