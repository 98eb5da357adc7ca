"""`standard`'s keys: none beyond `recipe.name`. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RECIPE_CONFIGS, RecipeConfig, option


@RECIPE_CONFIGS.register("standard")
@dataclass
class StandardConfig(RecipeConfig):
    """Supervised training: the configured loss (ASL or BCE) on the logits. No keys of its own."""

    name: str = option("standard", "training recipe (fastmlic/recipes); its keys are listed below")
