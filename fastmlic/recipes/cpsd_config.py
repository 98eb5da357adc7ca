"""CPSD's keys; the recipe and its pipeline are cpsd.py. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import RECIPE_CONFIGS, RecipeConfig, option, recipe_name


@RECIPE_CONFIGS.register("cpsd")
@dataclass
class CPSDConfig(RecipeConfig):
    """CPSD's student: 0.5 x the classification loss + the distillation from both teacher groups."""

    name: str = recipe_name("cpsd")
    cgp_teachers: list[str] = option([], "checkpoints of the co-occurrence (CGP) part teachers, one per part")
    dgp_teachers: list[str] = option([], "checkpoints of the dis-occurrence (DGP) part teachers, one a part")
    alpha: float = option(0.5, "share of the distillation weight on the CGP teachers (0.5: equal)")
    metric: Literal["mse", "kl"] = option("mse", "distillation distance on logits: mse (summed) or kl")
    temperature: float = option(4.0, "kl: softmax temperature (the loss is scaled by its square)")
    parts: int = option(5, "pipeline: class parts K of each partition (K CGP and K DGP teachers)")
    partition_seed: int = option(0, "pipeline: spectral clustering seed of the partitions")
    cgp_partition: str = option("", "pipeline: use this partition file for CGP (empty: computed)")
    dgp_partition: str = option("", "pipeline: use this partition file for DGP (empty: computed)")
    teacher_overrides: list[str] = option(
        [], "pipeline: --section.key=value changes of the teachers' runs from this config (e.g. their lr)"
    )
