"""OASS's keys; the recipe is oass.py. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from ..config import RECIPE_CONFIGS, RecipeConfig, option, recipe_name

Strategy = Literal["max", "cmax", "ctopk", "ctopk_w"]  # where a cut's key point is
STRATEGIES = typing.get_args(Strategy)


@RECIPE_CONFIGS.register("oass")
@dataclass
class OASSConfig(RecipeConfig):
    """OASS: the CSI head's loss + the cuts' reconstruction and classification (Akimoto-Cris/OASSMLL)."""

    name: str = recipe_name("oass")
    keypoint: Strategy = option(
        "cmax", "key points of the student's CAMs: max (one per image; the student cuts for itself), cmax, "
        "ctopk, ctopk_w (one per present class; an EMA teacher cuts)"
    )
    topk: int = option(5, "ctopk, ctopk_w: the local maxima whose (weighted) centre is the key point", low=1)
    radius_typo: bool = option(
        True, "ctopk: keep the official radius test that uses the row twice when a CAM has more than topk "
        "peaks (the published numbers have it); false tests the distance"
    )
    teacher_decay: float = option(
        0.99, "the EMA teacher's decay, reached by min(1 - 1 / (t + 1), decay)", low=0, below=1
    )
    last_stride: int = option(
        1, "the ResNet's last stage at stride 1 without dilation, as the official (output stride 16), or "
        "2: the backbone's own", choices=(1, 2)
    )
    alpha_p: float = option(0.5, "weight of the cuts' classification term (the README's 0.5)", low=0)
    alpha_re: float = option(3.0, "final weight of the reconstruction term (the README's 3.0)", low=0)
    alpha_schedule_re: float = option(
        0.05, "part of training over which the reconstruction weight rises from 0 (the README's 0.05; 0: "
        "none)", low=0, high=1
    )
