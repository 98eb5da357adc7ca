"""Models: a timm backbone and a head built by name (`model.head`); new heads register in HEADS."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .backbone import Backbone, Features
from .heads import HEADS, LabelAttentionHead, LinearHead

__all__ = ["HEADS", "Backbone", "Features", "LabelAttentionHead", "LinearHead", "MLICModel", "build_model"]


class MLICModel(nn.Module):
    """Backbone + head. `forward` returns the head's dict plus `grid`, the feature grid (H, W) that
    `attention` is laid out on."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        features = self.backbone(images)
        return {**self.head(features, return_attention=return_attention), "grid": features.grid}

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def per_class_parameters(self) -> list[str]:
        """State-dict names (relative to this model) whose first dimension indexes the classes."""
        return [f"head.{name}" for name in getattr(self.head, "per_class", ())]


def build_model(cfg: ModelConfig, num_classes: int, **head_options) -> MLICModel:
    """`head_options`: keyword arguments a recipe gives its own head, beyond the `model` section's."""
    backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path, cfg.output_stride)
    head_type = HEADS.lookup(cfg.head)
    head = head_type(backbone.num_features, num_classes, embed_dim=cfg.embed_dim or backbone.num_features,
                     heads=cfg.heads, drop_rate=cfg.drop_rate, **head_options)  # fmt: skip
    return MLICModel(backbone, head)
