"""`standard`'s keys: none beyond `recipe.name`. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RECIPE_CONFIGS, RecipeConfig, recipe_name


@RECIPE_CONFIGS.register("standard")
@dataclass
class StandardConfig(RecipeConfig):
    """Supervised training: the configured loss (ASL or BCE) on the logits. No keys of its own."""

    name: str = recipe_name("standard")
