"""Any timm backbone by name, as feature tokens and a pooled vector, with timm or local weights."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


class Backbone(nn.Module):
    """Wraps a timm model without its classifier. `forward` gives the final feature map as tokens
    [B, N, D] (CNN positions or ViT/Swin patches, prefix tokens dropped) and the pooled vector [B, D]
    that timm's own head would classify."""

    def __init__(self, name: str, pretrained: bool = False, pretrained_path: str | None = None):
        super().__init__()
        kwargs: dict = {"num_classes": 0}
        if pretrained_path:
            path = Path(pretrained_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model.pretrained_path: {path} does not exist")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        elif pretrained:
            kwargs["pretrained"] = True
        try:
            self.model = timm.create_model(name, **kwargs)
        except RuntimeError as e:
            if "Unknown model" not in str(e):
                raise
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            similar = ", ".join(close)
            raise ValueError(f"model.backbone={name!r} is not a timm model; similar: {similar}") from None
        self.num_features = self.model.num_features
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 0)
        self.nhwc_output = getattr(self.model, "output_fmt", "NCHW") == "NHWC"  # Swin and friends

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(images)
        pooled = self.model.forward_head(feats, pre_logits=True)
        if feats.ndim == 4:
            # NCHW -> NHWC is a view for channels-last maps, so the tokens cost no copy
            nhwc = feats if self.nhwc_output else feats.permute(0, 2, 3, 1)
            tokens = nhwc.flatten(1, 2)
        else:
            tokens = feats[:, self.num_prefix_tokens :]
        return tokens, pooled
