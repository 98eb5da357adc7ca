"""Training recipes, one method each: its keys in `<name>_config.py` (RECIPE_CONFIGS, fastmlic/config.py),
its training code in `<name>.py` (RECIPES). The contract is in `base.py`; `standard` is supervised
training. Importing this package registers the configs only: the training code imports torch, and
loads when RECIPES or another of its names is first read."""

import importlib

BUILT_IN = ("standard", "mulcon", "coco", "sgre", "cpsd", "oass")  # in the order `--help` lists them
__all__ = ["RECIPES", "DataRequest", "Recipe", "RecipeModule", "StepContext", "Term"]

for _recipe in BUILT_IN:
    importlib.import_module(f"{__name__}.{_recipe}_config")


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for recipe in BUILT_IN:  # registers the built-in recipes' training code in RECIPES
        importlib.import_module(f"{__name__}.{recipe}")
    return getattr(importlib.import_module(f"{__name__}.base"), name)
