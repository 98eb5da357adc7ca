"""`cpsd`: parallel self-distillation over class partitions (Xu et al., "Boosting Multi-Label Image
Classification with Complementary Parallel Self-Distillation", IJCAI 2022; official code Robbie-Xu/CPSD,
`partition/generate_with_adj.py` and `dis_B_cpsd.py`, read for this file).

- Partitions (`cpsd_partition.py`, re-exported here): CGP and DGP class parts by N-Cut of the
  conditional co-occurrence affinity, as `partition/generate_with_adj.py` computes it.
- Teachers: ordinary `standard` runs restricted to one part's classes (`data.classes`), one per part,
  for CGP and for DGP.
- The pipeline (`Recipe.stages`, run by `python -m fastmlic.pipeline --cfg psd_<dataset>`; how to run
  the teachers in parallel: cpsd_config.py): partition -> the 2K part teachers -> the student, each an
  ordinary run folder under runs/<preset>/.
- Student (this recipe): every teacher frozen in the same step; each group's logits scattered back to
  the student's class positions by class name: t_cgp, t_dgp. Loss = 0.5 x ASL(student, y) +
  alpha x 0.5 x D(student, t_cgp) + (0.5 - alpha x 0.5) x D(student, t_dgp), D = summed MSE on logits
  (`mse`) or KL over classes at temperature T, x T^2 (`kl`), both summed over the batch as the original.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, ConfigError, parse_overrides
from ..data import split_json
from ..errors import InputError
from ..shards.format import SplitInfo
from .base import RECIPES, Recipe, Stage, Term, stage_config

# the partitions (tools/class_partitions.py writes them on their own): public here as the recipe's first step
from .cpsd_partition import (
    MODES,
    affinity,
    import_published,
    partition_classes,
    published_partition,
    read_partition,
    tiny_parts,
    write_partition,
)

__all__ = ["MODES", "affinity", "distillation_loss", "import_published", "partition_classes",
           "read_partition", "scatter_teacher_logits", "write_partition"]  # fmt: skip


# the pipeline sets these in the teachers' configs itself
PIPELINE_KEYS = ("data.classes", "train.out_dir", "train.name")


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
        raise InputError(f"the teachers do not cover each student class once: missing "
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
    @classmethod
    def check(cls, cfg) -> None:
        r = cfg.recipe
        if cfg.loss.reduction != "sum":
            raise ConfigError("recipe.name=cpsd sums its distillation terms over the batch, as the original: "
                              "keep loss.reduction=sum so the terms keep their relative weights")  # fmt: skip
        try:
            keys = [f"{section}.{key}" for section, key, _ in parse_overrides(r.teacher_overrides)]
        except ConfigError as e:
            raise ConfigError(f"recipe.teacher_overrides: {e}") from None
        taken = [k for k in keys if k in PIPELINE_KEYS or k.startswith("recipe.")]
        if taken:
            raise ConfigError(f"recipe.teacher_overrides: {', '.join(taken)} are set by the pipeline for "
                              f"each teacher (a standard run on one part's classes): leave them out")
        try:  # a typo in the overrides fails now, not hours later when the teachers start
            teacher_config(cfg, Path(cfg.train.out_dir), [])
        except ConfigError as e:
            raise ConfigError(f"recipe.teacher_overrides: {e}") from None

    @classmethod
    def stages(cls, cfg: Config, root: Path) -> list[Stage]:
        """partition (both files) -> cgp0..cgp{K-1}, dgp0..dgp{K-1} (any order, or in parallel) -> student."""
        files = {mode: root / f"partition_{mode}.json" for mode in MODES}
        stages = [Stage("partition", root, make=partial(write_partitions, cfg, files),
                        outputs=tuple(files.values()))]  # fmt: skip
        teachers = [f"{mode}{k}" for mode in MODES for k in range(cfg.recipe.parts)]
        for name in teachers:
            mode, k = name[:3], int(name[3:])
            build = partial(part_teacher_config, cfg, root / name, files[mode], k)
            stages.append(Stage(name, root / name, needs=("partition",), config=build,
                                outputs=(root / name / "best.pt",)))  # the student's teacher weights
        return [*stages, Stage("student", root / "student", needs=tuple(teachers),
                               config=partial(student_config, cfg, root),
                               outputs=(root / "student" / "best.pt",))]  # fmt: skip

    @classmethod
    def read_released(cls, path, cfg, classes, options):
        from .cpsd_released import read_student

        return read_student(path, cfg, classes, options)

    def setup(self, module, ctx) -> None:
        if self.cfg.recipe.teacher_bn == "batch":  # the teachers stay frozen; their BatchNorm normalises
            for teacher in self.teachers.values():  # by each batch's statistics, as the original's do
                for layer in teacher.modules():
                    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                        layer.train()

    def teacher_paths(self) -> dict[str, str]:
        r = self.cfg.recipe
        if not r.cgp_teachers or not r.dgp_teachers:
            raise ConfigError("recipe.cgp_teachers and recipe.dgp_teachers are empty: `python -m "
                              "fastmlic.pipeline --cfg psd_<dataset>` trains the part teachers and then this "
                              "student, or list a checkpoint per part in each")  # fmt: skip
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


# --------------------------------------------------------------------------- the pipeline's stages


def split_classes(cfg: Config) -> SplitInfo:
    """The training split's description, restricted to `data.classes` when set: what is partitioned."""
    path = split_json(cfg.data, cfg.data.train_split)
    info = SplitInfo.load(path)
    return info.subset(cfg.data.classes, str(path))[0] if cfg.data.classes else info


def write_partitions(cfg: Config, files: dict[str, Path]) -> None:
    """The CGP and DGP partitions of the student's classes into `recipe.parts` parts: computed from the
    training split's co-occurrence, or read from `recipe.cgp_partition` / `dgp_partition` (by name)."""
    r, info = cfg.recipe, split_classes(cfg)
    given = {"cgp": r.cgp_partition, "dgp": r.dgp_partition}
    for mode, path in files.items():
        source = given[mode]
        if source == "published":
            source = str(published_partition(cfg.data.dataset, r.parts, mode))
        if source:
            column = {c: i for i, c in enumerate(info.classes)}
            parts = read_partition(Path(source), info.classes)
            groups = [sorted(column[c] for c in part) for part in parts]
            how = {"from": source}
        else:
            if not info.cooccurrence:
                raise InputError(f"{split_json(cfg.data, cfg.data.train_split)} records no co-occurrence "
                                 f"(it is not kept above 2048 classes; this split has {len(info.classes)}): "
                                 f"give the parts as files, recipe.cgp_partition and recipe.dgp_partition")
            groups = partition_classes(np.array(info.cooccurrence), np.array(info.positives), r.parts, mode,
                                       r.partition_seed)  # fmt: skip
            how = {"seed": r.partition_seed}
            tiny = tiny_parts(groups, len(info.classes))
            if tiny:
                shown = "; ".join(f"part {k}: {', '.join(info.classes[i] for i in groups[k])}"
                                  for k in tiny)  # fmt: skip
                warnings.warn(f"the computed {mode.upper()} partition is unbalanced: parts of "
                              f"{[len(g) for g in groups]} classes ({shown}); a tiny part's teacher learns "
                              f"little. The paper's own partitions: recipe.{mode}_partition=published "
                              f"(mscoco, nuswide), or another recipe.partition_seed",
                              stacklevel=2)  # fmt: skip
        if len(groups) != r.parts:
            raise InputError(f"{source or 'the spectral clustering'}: {len(groups)} {mode} parts, "
                             f"recipe.parts={r.parts}")  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        write_partition(path, info.classes, sorted(groups, key=lambda g: g[0]), mode=mode, k=r.parts,
                        split=cfg.data.train_split, **how)  # fmt: skip
        print(f"{mode}: parts of {[len(g) for g in groups]} classes -> {path}")


def teacher_config(cfg: Config, folder: Path, classes: list[str]) -> Config:
    """A part teacher: this config as a `standard` run on `classes`, with `recipe.teacher_overrides`."""
    mapping = {**cfg.to_dict(), "recipe": {"name": "standard"}}
    mapping["data"] = {**mapping["data"], "classes": classes}
    return stage_config(mapping, folder, cfg.recipe.teacher_overrides, source="recipe.teacher_overrides")


def part_teacher_config(cfg: Config, folder: Path, partition: Path, k: int) -> Config:
    return teacher_config(cfg, folder, read_partition(partition, split_classes(cfg).classes)[k])


def student_config(cfg: Config, root: Path) -> Config:
    """This config, reading the best weights of the pipeline's teachers."""
    mapping = cfg.to_dict()
    mapping["recipe"] = {**mapping["recipe"], **{
        f"{mode}_teachers": [str(root / f"{mode}{k}" / "best.pt") for k in range(cfg.recipe.parts)]
        for mode in MODES}}  # fmt: skip
    return stage_config(mapping, root / "student")
