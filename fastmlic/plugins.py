"""Recipes are plugins, found by their files: adding one edits no list anywhere.

- Built in: every `NAME_config.py` in fastmlic/recipes/ (in every folder of the package's path) is a
  recipe, its keys; its training code is `NAME.py` beside it.
- From another installed package: an entry point in the `fastmlic.recipes` group, `NAME =
  "package.module"`, names the training module; its keys are in `package.module_config`.

The registries that recipes fill load them on first use (`Registry(load=...)`, fastmlic/registry.py):
RECIPE_CONFIGS imports the config modules, which import no torch, so configs and `--help` load without
it; RECIPES and HEADS (recipes bring their own heads) import the training modules. No module imports a
recipe by name, and each load looks again, so a recipe added while a process runs is found too.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from functools import cache
from pathlib import Path

from .errors import InputError

PACKAGE = "fastmlic.recipes"
ENTRY_POINTS = "fastmlic.recipes"
CONFIG_SUFFIX = "_config"


@cache
def _installed() -> tuple[tuple[str, str], ...]:
    """(name, training module) of the recipes other packages declare; read once per process (the
    installed packages' metadata is what it costs)."""
    return tuple((ep.name, ep.value) for ep in importlib.metadata.entry_points(group=ENTRY_POINTS))


def _package_folders() -> list[str]:
    package = sys.modules.get(PACKAGE)
    if package is not None:
        return list(package.__path__)
    return list(importlib.util.find_spec(PACKAGE).submodule_search_locations or [])


def recipe_modules() -> dict[str, str]:
    """Recipe name -> its training module: the built-in recipes, then the installed ones."""
    found: dict[str, str] = {}
    for folder in _package_folders():
        for path in sorted(Path(folder).glob(f"*{CONFIG_SUFFIX}.py")):
            name = path.stem.removesuffix(CONFIG_SUFFIX)
            found.setdefault(name, f"{PACKAGE}.{name}")
    for name, module in _installed():
        if name in found and found[name] != module:
            raise InputError(f"recipe {name!r} is declared twice: {found[name]} and {module} (entry point "
                             f"group {ENTRY_POINTS}); uninstall one of them")  # fmt: skip
        found[name] = module
    return found


def load_configs() -> None:
    """Import every recipe's config module (registering it in RECIPE_CONFIGS)."""
    for module in recipe_modules().values():
        importlib.import_module(module + CONFIG_SUFFIX)


def load_recipes() -> None:
    """Import every recipe's training module (registering it in RECIPES, and its heads in HEADS)."""
    for module in recipe_modules().values():
        importlib.import_module(module)
