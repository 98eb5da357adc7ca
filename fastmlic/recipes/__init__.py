"""Training recipes, one method each: its keys in `NAME_config.py` (a `RecipeConfig` registered in
RECIPE_CONFIGS, fastmlic/config.py; no torch), its training code in `NAME.py` (a `Recipe` registered in
RECIPES, fastmlic/recipes/base.py, which holds the contract). Both are found by their file names
(fastmlic/plugins.py): a new recipe is its two files and nothing else. `standard` is supervised
training; a method's larger parts live beside it as `NAME_*.py` (e.g. cpsd_partition.py)."""
