"""Training recipes, one module per method, registered by name in RECIPES (`recipe.name`).
The contract is in `base.py`; `standard.py` is supervised training."""

from . import coco, cpsd, mulcon, oass, sgre, standard  # noqa: F401  (registers the built-in recipes)
from .base import RECIPES, DataRequest, Recipe, RecipeModule, StepContext, Term

__all__ = ["RECIPES", "DataRequest", "Recipe", "RecipeModule", "StepContext", "Term"]
