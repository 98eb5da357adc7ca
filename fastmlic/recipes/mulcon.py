"""`mulcon`: label-level supervised contrastive learning beside the classification loss (Dao et al.,
"Contrastively Enforcing Distinctiveness for Multi-label Image Classification", Neurocomputing 2023;
official code SonDaoDuy/MulCon).

The head gives one feature vector per label; a projector (Linear -> ReLU -> Linear, L2-normalised)
maps it to the contrastive space. Every (image, positive label) slot of the batch is an anchor; its
positives are the slots of the same label in other images. Under DDP the slots of every rank are
gathered with their gradient, so the term sees the global batch as DataParallel did in the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RecipeConfig, option
from ..distributed import gather_with_grad
from ..kernels import supcon_loss
from .base import RECIPES, Recipe, RecipeModule, Term


@dataclass
class MulConConfig(RecipeConfig):
    name: str = option("mulcon", "training recipe (fastmlic/recipes); its keys are listed below")
    weight: float = option(0.5, "weight of the label-level contrastive term (the classification term has 1)")
    temperature: float = option(0.2, "temperature of the contrastive term (MulCon: 0.2)")
    proj_dim: int = option(128, "width of the projector's output, the contrastive space")


def label_contrastive_loss(
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.2,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss over label slots. `embeddings` [B, C, P] L2-normalised, `targets`
    [B, C] multi-hot, `ignore` [B, C] bool or None. Anchors are the slots with target 1 that are not
    ignored; positives of an anchor are the other anchors of the same label; the denominator runs over
    every other anchor. Returns the mean over anchors (an anchor without positives adds 0), fp32."""
    selected = targets > 0.5
    if ignore is not None:
        selected &= ~ignore
    image_idx, label_idx = selected.nonzero(as_tuple=True)
    return supcon_loss(embeddings[image_idx, label_idx], label_idx, temperature=temperature,
                       base_temperature=temperature)  # fmt: skip


class MulConModule(RecipeModule):
    def __init__(self, model, embed_dim: int, proj_dim: int):
        super().__init__(model)
        self.projector = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                       nn.Linear(embed_dim, proj_dim))  # fmt: skip

    def forward(self, images: torch.Tensor) -> dict:
        out = self.model(images)
        out["label_embeddings"] = F.normalize(self.projector(out["label_features"]), dim=-1)
        return out


@RECIPES.register("mulcon")
class MulCon(Recipe):
    """Classification plus MulCon's label-level contrastive term on per-label embeddings."""

    Config = MulConConfig
    head_outputs = ("logits", "label_features")

    def build_module(self) -> MulConModule:
        module = super().build_module()
        return MulConModule(module.model, module.model.head.embed_dim, self.cfg.recipe.proj_dim)

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        out = net(batch.images)
        r = self.cfg.recipe
        # every rank's slots, differentiable for this rank's: the term of the global batch
        embeddings = gather_with_grad(out["label_embeddings"], ctx.world_size)
        targets = gather_with_grad(batch.targets, ctx.world_size)
        ignore = None
        if batch.ignore is not None and self.cfg.loss.use_ignore:
            ignore = gather_with_grad(batch.ignore.to(torch.uint8), ctx.world_size).bool()
        contrastive = label_contrastive_loss(embeddings.float(), targets, r.temperature, ignore)
        return {
            "cls": self.classification(out["logits"], batch),
            "contrastive": Term(contrastive, "global", weight=r.weight),
        }
