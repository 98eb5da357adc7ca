"""CPSD's keys; the recipe and its pipeline are cpsd.py. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import RECIPE_CONFIGS, RecipeConfig, option, recipe_name


@RECIPE_CONFIGS.register("cpsd")
@dataclass
class CPSDConfig(RecipeConfig):
    """CPSD's student: 0.5 x the classification loss + the distillation from both teacher groups.

    `python -m fastmlic.pipeline --cfg psd_<dataset>` trains it in stages, each an ordinary run folder
    under runs/<preset>/: `partition` writes the CGP and DGP class partitions, `cgp0`..`cgp{K-1}` and
    `dgp0`..`dgp{K-1}` train one `standard` teacher on each part's classes, and `student` trains the
    full-class model from all of them. The teachers are independent: start them at the same time on
    separate GPUs or nodes (runs/<preset>/ on a shared filesystem), then the student:

        python -m fastmlic.pipeline --cfg psd_mscoco --stage partition
        CUDA_VISIBLE_DEVICES=0 python -m fastmlic.pipeline --cfg psd_mscoco --stage cgp0 &
        CUDA_VISIBLE_DEVICES=1 python -m fastmlic.pipeline --cfg psd_mscoco --stage cgp1 &    # ... dgp4
        python -m fastmlic.pipeline --cfg psd_mscoco --stage student

    (`torchrun ... -m fastmlic.pipeline` runs each stage on all its processes.)
    """

    name: str = recipe_name("cpsd")
    released = "Robbie-Xu/CPSD's students (dis_B_cpsd.py's model or EMA .ckpt: features + classify)"
    cgp_teachers: list[str] = option([], "checkpoints of the co-occurrence (CGP) part teachers, one per part")
    dgp_teachers: list[str] = option([], "checkpoints of the dis-occurrence (DGP) part teachers, one a part")
    alpha: float = option(
        0.5, "share of the distillation weight on the CGP teachers (0.5: equal)", low=0, high=1
    )
    metric: Literal["mse", "kl"] = option("mse", "distillation distance on logits: mse (summed) or kl")
    temperature: float = option(4.0, "kl: softmax temperature (the loss is scaled by its square)", above=0)
    parts: int = option(5, "pipeline: class parts K of each partition (K CGP and K DGP teachers)", low=1)
    partition_seed: int = option(0, "pipeline: spectral clustering seed of the partitions")
    cgp_partition: str = option(
        "", "pipeline: the CGP partition: 'published' (the paper's, mscoco and nuswide), a partition file, "
        "or empty: computed from the training split"
    )
    dgp_partition: str = option(
        "", "pipeline: the DGP partition: 'published' (the paper's, mscoco and nuswide), a partition file, "
        "or empty: computed from the training split"
    )
    teacher_bn: Literal["eval", "batch"] = option(
        "eval", "the frozen teachers' BatchNorm: running statistics (eval), or each batch's own, as the "
        "official dis_B_cpsd.py runs them (its load_teacher never calls .eval())"
    )
    teacher_overrides: list[str] = option(
        [], "pipeline: --section.key=value changes of the teachers' runs from this config (e.g. their lr)"
    )
