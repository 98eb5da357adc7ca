"""The classification loss named in `loss`: ASL (the fused kernel) or BCE. Takes logits and targets,
returns an fp32 scalar; `reduction` says how it grows with the batch (what DDP scaling needs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig
from .kernels import asl_loss


class MultiLabelLoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    @property
    def reduction(self) -> str:
        """'sum' when the loss grows with the batch (ASL's sum), 'mean' when it does not."""
        return self.cfg.reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None = None):
        c = self.cfg
        ignore = ignore if c.use_ignore else None
        if c.name == "asl":
            return asl_loss(logits, targets, gamma_pos=c.gamma_pos, gamma_neg=c.gamma_neg, clip=c.clip,
                            eps=c.eps, detach_focal=c.detach_focal, reduction=c.reduction, scale=c.scale,
                            ignore=ignore)  # fmt: skip
        cells = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
        if ignore is not None:
            cells = cells.masked_fill(ignore, 0.0)
        total = cells.sum()
        if c.reduction == "mean" and ignore is not None:  # the count stays on the device: reading it
            total = total / (cells.numel() - ignore.sum()).clamp(min=1)  # would wait for the GPU
        elif c.reduction == "mean":
            total = total / max(cells.numel(), 1)
        return total * c.scale


def build_loss(cfg: LossConfig) -> MultiLabelLoss:
    return MultiLabelLoss(cfg)
