"""OASS's keys; the recipe is oass.py. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from ..config import RECIPE_CONFIGS, RecipeConfig, option, recipe_name

Strategy = Literal["max", "cmax", "ctopk", "ctopk_w"]  # where the key point of a class's CAM is
STRATEGIES = typing.get_args(Strategy)


@RECIPE_CONFIGS.register("oass")
@dataclass
class OASSConfig(RecipeConfig):
    """OASS: Puzzle-CAM's losses + object-aware patch consistency (EMA teacher) + class-specific instances."""

    name: str = recipe_name("oass")
    keypoint: str = option("cmax", f"key-point strategy on the teacher's CAMs: {' | '.join(STRATEGIES)}")
    topk: int = option(3, "ctopk, ctopk_w: local maxima per class whose centre is the key point", low=1)
    teacher_decay: float = option(
        0.999, "decay of the EMA teacher that gives key points, patches, instances", low=0, below=1
    )
    patch_scale: float = option(
        0.5, "side of an object-centred patch as a fraction of the image side", above=0, high=1
    )
    pieces: int = option(4, "Puzzle-CAM's tiles per image, a square number (4: 2 x 2)")
    alpha_p: float = option(0.5, "weight of the merged tiles' classification term (Puzzle-CAM's pcl)", low=0)
    alpha_re: float = option(
        3.0, "final weight of the reconstruction term (full CAMs vs merged tile CAMs)", low=0
    )
    alpha_schedule_re: float = option(
        0.05, "part of training over which the re weight rises from 0 (0: no ramp)", low=0, high=1)
    alpha_ss: float = option(
        1.0, "weight of the object-aware patch consistency term (ours: no paper value)", low=0
    )
    alpha_csi: float = option(1.0, "weight of the class-specific instance term (ours: no paper value)", low=0)
