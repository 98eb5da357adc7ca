"""Models: a timm backbone and a head built by name (`model.head`), so new heads register in HEADS."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .backbone import Backbone
from .heads import HEADS, LabelAttentionHead, LinearHead

__all__ = ["HEADS", "Backbone", "LabelAttentionHead", "LinearHead", "MLICModel", "build_model"]


class MLICModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        tokens, pooled = self.backbone(images)
        return self.head(tokens, pooled, return_attention=return_attention)


def build_model(cfg: ModelConfig, num_classes: int) -> MLICModel:
    backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path)
    head = HEADS[cfg.head](backbone.num_features, num_classes, embed_dim=cfg.embed_dim, heads=cfg.heads,
                           proj_dim=cfg.proj_dim, drop_rate=cfg.drop_rate)  # fmt: skip
    return MLICModel(backbone, head)
