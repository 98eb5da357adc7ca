"""Any timm backbone by name, as feature tokens on their spatial grid plus a pooled vector, with timm or
local weights."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError
from ..errors import MissingInput
from .hub import pretrained_weights


@dataclass
class Features:
    """The backbone's last feature map, once: tokens [B, N, D] in row-major grid order (CNN positions or
    ViT/Swin patches, prefix tokens dropped), the grid (H, W) with H * W = N, and the pooled vector
    [B, D] that timm's own head would classify. Heads that need a map (CAMs, attention pictures) use
    `as_map()`; the rest use tokens or pooled."""

    tokens: torch.Tensor
    grid: tuple[int, int]
    pooled: torch.Tensor

    def as_map(self) -> torch.Tensor:
        """[B, D, H, W] view of the tokens (channels-last memory: no copy)."""
        b, _, d = self.tokens.shape
        return self.tokens.view(b, *self.grid, d).permute(0, 3, 1, 2)


class Backbone(nn.Module):
    """Wraps a timm model without its classifier; `forward` gives its `Features`."""

    def __init__(self, name: str, pretrained: bool = False, pretrained_path: str | None = None,
                 output_stride: int = 0):  # fmt: skip
        super().__init__()
        kwargs: dict = {"num_classes": 0}
        if output_stride:  # timm dilates the last stages of the CNNs that support it
            kwargs["output_stride"] = output_stride
        if pretrained_path:
            path = Path(pretrained_path).expanduser()
            if not path.is_file():
                raise MissingInput(f"model.pretrained_path: {path} does not exist")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        elif pretrained:
            kwargs["pretrained"] = True
        import timm  # here, not at import: timm pulls in torchvision and dynamo (seconds), and a
        # command's --help loads the config, which imports this module

        fetched = pretrained and not pretrained_path  # from timm's hub or its cache
        try:
            with pretrained_weights(name) if fetched else contextlib.nullcontext():
                self.model = timm.create_model(name, **kwargs)
        except RuntimeError as e:
            if "Unknown model" not in str(e):
                raise
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            similar = ", ".join(close)
            raise ConfigError(f"model.backbone={name!r} is not a timm model; similar: {similar}") from None
        except TypeError as e:
            if not output_stride or "output_stride" not in str(e):
                raise
            raise ConfigError(f"model.output_stride={output_stride}: timm's {name} cannot change its stride "
                             "(ResNets, ResNeXts, EfficientNets and most CNNs can); use 0") from None
        self.num_features = self.model.num_features
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 0)
        self.nhwc_output = getattr(self.model, "output_fmt", "NCHW") == "NHWC"  # Swin and friends

    def forward(self, images: torch.Tensor) -> Features:
        feats = self.model.forward_features(images)
        pooled = self.model.forward_head(feats, pre_logits=True)
        if feats.ndim == 4:
            # NCHW -> NHWC is a view for channels-last maps, so the tokens cost no copy
            nhwc = feats if self.nhwc_output else feats.permute(0, 2, 3, 1)
            return Features(nhwc.flatten(1, 2), (nhwc.shape[1], nhwc.shape[2]), pooled)
        return Features(feats[:, self.num_prefix_tokens :], self._patch_grid(images), pooled)

    def _patch_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """A ViT's patch grid for this input size (timm's dynamic_img_size models included)."""
        embed = self.model.patch_embed
        if hasattr(embed, "dynamic_feat_size"):
            return tuple(embed.dynamic_feat_size(images.shape[-2:]))
        return tuple(embed.grid_size)
