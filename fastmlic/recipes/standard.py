"""`standard`: supervised multi-label training, the classification loss on the model's logits."""

from __future__ import annotations

from .base import RECIPES, Recipe, Term


@RECIPES.register("standard")
class Standard(Recipe):
    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        return {"cls": self.classification(net(batch.images)["logits"], batch)}
