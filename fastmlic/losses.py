"""The training loss named in `loss`: ASL (the fused kernel) or BCE, plus an optional label-level
SupCon term on the head's per-label embeddings. Returns an fp32 scalar and its named parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig
from .kernels import asl_loss, supcon_loss


class MultiLabelLoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    @property
    def sums_over_batch(self) -> bool:
        """True when the loss grows with the batch (ASL's sum): DDP's gradient averaging must then be
        undone by the world size to train as one process on the global batch would."""
        return self.cfg.reduction == "sum"

    def classification(self, logits: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None):
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
        if c.reduction == "mean":
            total = total / (cells.numel() - (int(ignore.sum()) if ignore is not None else 0) or 1)
        return total * c.scale

    def supcon(self, embeddings: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None):
        """MulCon: every (image, positive label) slot is an anchor; slots of the same label attract."""
        selected = targets > 0.5
        if ignore is not None:
            selected &= ~ignore
        image_idx, label_idx = selected.nonzero(as_tuple=True)
        z = embeddings[image_idx, label_idx]
        t = self.cfg.supcon_temperature
        return supcon_loss(z, label_idx, temperature=t, base_temperature=t)

    def forward(self, outputs: dict, targets: torch.Tensor, ignore: torch.Tensor | None = None):
        parts = {"cls": self.classification(outputs["logits"], targets, ignore)}
        if self.cfg.supcon_weight > 0:
            parts["supcon"] = self.supcon(outputs["label_embeddings"], targets, ignore)
            total = parts["cls"] + self.cfg.supcon_weight * parts["supcon"]
        else:
            total = parts["cls"]
        return total, parts


def build_loss(cfg: LossConfig) -> MultiLabelLoss:
    return MultiLabelLoss(cfg)
