"""`cpsd`: parallel self-distillation over class partitions (Xu et al., "Boosting Multi-Label Image
Classification with Complementary Parallel Self-Distillation", IJCAI 2022; official code Robbie-Xu/CPSD,
`partition/generate_with_adj.py` and `dis_B_cpsd.py`, read for this file).

- Partitions (`fastmlic/partition.py`, re-exported here): CGP and DGP class parts by N-Cut of the
  conditional co-occurrence affinity, as `partition/generate_with_adj.py` computes it.
- Teachers: ordinary `standard` runs restricted to one part's classes (`data.classes`), one per part,
  for CGP and for DGP.
- Student (this recipe): every teacher frozen in the same step; each group's logits scattered back to
  the student's class positions by class name: t_cgp, t_dgp. Loss = 0.5 x ASL(student, y) +
  alpha x 0.5 x D(student, t_cgp) + (0.5 - alpha x 0.5) x D(student, t_dgp), D = summed MSE on logits
  (`mse`) or KL over classes at temperature T, x T^2 (`kl`), both summed over the batch as the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..config import ConfigError, RecipeConfig, option

# the partitions are the core's (`python -m fastmlic.partition`); public here as the recipe's first step
from ..partition import MODES, affinity, import_published, partition_classes, read_partition, write_partition
from .base import RECIPES, Recipe, Term

__all__ = ["MODES", "affinity", "distillation_loss", "import_published", "partition_classes",
           "read_partition", "scatter_teacher_logits", "write_partition"]  # fmt: skip


@dataclass
class CPSDConfig(RecipeConfig):
    name: str = option("cpsd", "training recipe (fastmlic/recipes); its keys are listed below")
    cgp_teachers: list[str] = option([], "checkpoints of the co-occurrence (CGP) part teachers, one per part")
    dgp_teachers: list[str] = option([], "checkpoints of the dis-occurrence (DGP) part teachers, one a part")
    alpha: float = option(0.5, "share of the distillation weight on the CGP teachers (0.5: equal)")
    metric: Literal["mse", "kl"] = option("mse", "distillation distance on logits: mse (summed) or kl")
    temperature: float = option(4.0, "kl: softmax temperature (the loss is scaled by its square)")


# --------------------------------------------------------------------------- the student


def scatter_teacher_logits(logits: list[torch.Tensor], teacher_classes: list[list[str]],
                           classes: list[str]) -> torch.Tensor:  # fmt: skip
    """One [B, C] target from part teachers' logits ([B, C_k] each, columns in `teacher_classes[k]`
    order), placed at the student's class positions by name. Every class must come from one teacher."""
    column = {c: i for i, c in enumerate(classes)}
    flat = [c for names in teacher_classes for c in names]  # the stacked logits' columns
    keep = [j for j, c in enumerate(flat) if c in column]
    index = [column[flat[j]] for j in keep]
    if sorted(index) != list(range(len(classes))):
        raise ValueError(f"the teachers do not cover each student class once: missing "
                         f"{[c for c in classes if c not in flat][:5]}")  # fmt: skip
    stacked = torch.cat([lg.float() for lg in logits], dim=1)
    target = torch.empty(stacked.shape[0], len(classes), device=stacked.device)
    target[:, index] = stacked[:, keep]
    return target


def distillation_loss(student_logits: torch.Tensor, cgp_logits: torch.Tensor, dgp_logits: torch.Tensor,
                      alpha: float = 0.5, metric: str = "mse",
                      temperature: float = 4.0) -> torch.Tensor:  # fmt: skip
    """alpha x 0.5 x D(s, t_cgp) + (0.5 - alpha x 0.5) x D(s, t_dgp), fp32, summed over the batch:
    D = sum of squared logit differences (`mse`) or T^2 x KL(softmax(t / T) || softmax(s / T)) over
    classes (`kl`)."""
    s = student_logits.float()

    def distance(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        if metric == "mse":
            return (s - t).pow(2).sum()
        if metric == "kl":
            log_p = F.log_softmax(s / temperature, dim=1)
            return F.kl_div(log_p, F.softmax(t / temperature, dim=1), reduction="sum") * temperature**2
        raise ValueError(f"recipe.metric={metric!r}: use mse or kl")

    scale = alpha * 0.5
    return scale * distance(cgp_logits) + round(0.5 - scale, 2) * distance(dgp_logits)


@RECIPES.register("cpsd")
class CPSD(Recipe):
    """The student: 0.5 x the classification loss + the distillation from both teacher groups."""

    Config = CPSDConfig

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        r = cfg.recipe
        if not r.cgp_teachers or not r.dgp_teachers:
            raise ConfigError("recipe.cgp_teachers and recipe.dgp_teachers: each lists a checkpoint per part")
        if not 0 <= r.alpha <= 1 or r.temperature <= 0:
            raise ConfigError(f"recipe.alpha={r.alpha} must be in [0, 1] and recipe.temperature="
                              f"{r.temperature} positive")  # fmt: skip
        if cfg.loss.reduction != "sum":
            raise ConfigError("recipe.name=cpsd sums its distillation terms over the batch, as the original: "
                              "keep loss.reduction=sum so the terms keep their relative weights")  # fmt: skip

    def teacher_paths(self) -> dict[str, str]:
        r = self.cfg.recipe
        return {**{f"cgp{k}": p for k, p in enumerate(r.cgp_teachers)},
                **{f"dgp{k}": p for k, p in enumerate(r.dgp_teachers)}}  # fmt: skip

    def group_target(self, group: str, images: torch.Tensor) -> torch.Tensor:
        names = [n for n in self.teachers if n.startswith(group)]
        with torch.no_grad():
            logits = [self.teachers[n].predict(images)["logits"] for n in names]
        return scatter_teacher_logits(logits, [self.teacher_classes[n] for n in names], self.classes)

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        r = self.cfg.recipe
        cgp, dgp = self.group_target("cgp", batch.images), self.group_target("dgp", batch.images)
        logits = net(batch.images)["logits"]
        cls = self.classification(logits, batch)
        cls.weight = 0.5
        distill = distillation_loss(logits, cgp, dgp, r.alpha, r.metric, r.temperature)
        return {"cls": cls, "distill": Term(distill, "sum")}
