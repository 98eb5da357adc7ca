"""MulCon's keys; the recipe is mulcon.py. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RECIPE_CONFIGS, RecipeConfig, option, recipe_name


@RECIPE_CONFIGS.register("mulcon")
@dataclass
class MulConConfig(RecipeConfig):
    """MulCon: stage 1 classification on label-level attention; stage 2 + label-level contrastive term."""

    name: str = recipe_name("mulcon")
    released = "SonDaoDuy/MulCon's [ema_]epoch_N_net_{E,A,C_i,P}.pth (a folder, or one of its files)"
    stage: int = option(
        2, "1: classification only; 2: + the contrastive term on two views (from stage 1)", choices=(1, 2)
    )
    weight: float = option(
        0.5, "stage 2: weight of the contrastive term (the classification term has 1)", low=0
    )
    temperature: float = option(0.2, "stage 2: temperature of the contrastive term", above=0)
    proj_dim: int = option(128, "stage 2: width of the projector's output, the contrastive space", low=1)
    init_ema: bool = option(False, "stage 2: start from the EMA weights of train.init_from (a last.pt)")
    first_stage: str = option(
        "",
        "stage 2: the stage-1 preset or YAML that `python -m fastmlic.pipeline` trains first; its state at "
        "first_stage_epoch then starts this run (train.py ignores it and reads train.init_from)",
    )
    first_stage_epoch: int = option(
        0, "stage 2 in the pipeline: start from stage one's state at the end of this epoch (kept as "
        "epochs/epoch-NNN.pt; the paper: 15 of 25)", low=0, zero="its last epoch, last.pt",
    )
