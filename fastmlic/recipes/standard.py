"""`standard`: supervised multi-label training, the classification loss on the model's logits."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RecipeConfig, option
from .base import RECIPES, Recipe, Term


@dataclass
class StandardConfig(RecipeConfig):
    name: str = option("standard", "training recipe (fastmlic/recipes); its keys are listed below")


@RECIPES.register("standard")
class Standard(Recipe):
    """Supervised training: the configured loss (ASL or BCE) on the logits. No keys of its own."""

    Config = StandardConfig

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        return {"cls": self.classification(net(batch.images)["logits"], batch)}
