"""The recipe contract: how a training method plugs into the trainer without touching core files.

A recipe declares its keys in `<name>_config.py`: a `RecipeConfig` subclass registered in
`RECIPE_CONFIGS` (fastmlic/config.py) and selected by `recipe: {name: NAME, ...}`; it imports no torch,
so configs load and `--help` answers without it. Its training code, in `<name>.py`, is a `Recipe`
registered in RECIPES under the same name. Both are found by their file names (fastmlic/plugins.py).
A recipe has:
- `head_outputs`: what it reads from the head, and `head_inputs`: what it hands its head beyond the
  `model` section (a head lists what it `needs`); the builder checks both before a run is built;
- `check(cfg)`: its cross-field checks beyond the ranges its fields declare, made at the same time;
- `data_request(cfg)`: what it needs from the loaders: augmented views per image, a class subset;
- `build_module(trained)`: the one trainable module. Everything that gets gradients runs in its single
  `forward`, so DDP, torch.compile, EMA and the optimiser see only it; `predict` gives the logits that
  evaluation, prediction and reports use. `trained` is a checkpoint's weights when the module is
  rebuilt for inference: what was fixed when training started (e.g. label embeddings) comes from it;
- `initial_weights(ckpt, what)`: which weights of `train.init_from` start the run (default: the
  checkpoint's model weights; a later stage may take the EMA's, or insist on the same classes);
- `teacher_paths()`: frozen models it reads (checkpoints of other runs); the trainer loads them once,
  frozen, in eval mode, outside DDP, the optimiser and EMA, and records them by path and sha256;
- `setup(module, ctx)`: builds what it derives from the trainable module (e.g. an EMA teacher), once;
- `training_step(net, batch, ctx)`: named loss `Term`s, each saying how it reduces over the batch;
- `after_step(module, ctx)`: a hook after every optimiser step (e.g. updating that EMA teacher);
- `state_dict()` / `load_state_dict()`: state that changes in training beyond the trainable weights;
- `stages(cfg, root)`: the runs that make its result, for `python -m fastmlic.pipeline` (default: one),
  each a `Stage`;
- `read_released(path, cfg, classes, options)`: its paper's released checkpoints as its module's
  weights, for `python -m fastmlic.convert --from NAME` (its config's `released` says what they are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..config import Config, load_config
from ..data import Batch
from ..errors import InputError
from ..losses import build_loss
from ..models import MLICModel, build_model
from ..plugins import load_recipes
from ..registry import Registry
from ..released import Released, ReleaseOptions

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

RECIPES: Registry[type[Recipe]] = Registry("recipe", "recipe.name", load=load_recipes)

Reduction = Literal["sum", "mean", "global"]


@dataclass
class Term:
    """One loss term of a step (an fp32 scalar) with its weight and how it reduces over the batch:

    - 'sum':    summed over this rank's samples (ASL's sum). The global batch's loss is the sum over
                ranks, but DDP averages gradients, so the term is scaled by the world size; over
                micro-batches it is summed, as the larger batch would sum it.
    - 'mean':   averaged over this rank's samples. Ranks hold equal batches, so DDP's average is the
                global mean; over micro-batches it is averaged.
    - 'global': computed from tensors gathered over all ranks (`distributed.gather_with_grad`), the
                same value on every rank; each rank's backward yields only its own rows' gradient, so
                the term is scaled by the world size, and averaged over micro-batches.

    With these scales N processes x k micro-batches take the step of one process on the global batch.
    """

    value: torch.Tensor
    reduction: Reduction
    weight: float = 1.0

    def backward_scale(self, world_size: int, accumulate: int) -> float:
        if self.reduction == "sum":
            return float(world_size)
        if self.reduction == "mean":
            return 1.0 / accumulate
        return world_size / accumulate

    def report_scale(self, world_size: int) -> float:
        """Factor that puts this rank's value in units of the global batch before averaging over ranks."""
        return float(world_size) if self.reduction == "sum" else 1.0


@dataclass(frozen=True)
class DataRequest:
    views: int = 1  # independently augmented views of each training image (one decode)
    classes: list[str] | None = None  # train and evaluate on these classes only (names); None: all


@dataclass
class StepContext:
    """What a training step and the after-step hook may read: never a growing parameter list."""

    step: int  # optimiser steps done so far
    epoch: int
    total_steps: int
    device: torch.device
    amp: str  # 'bf16' | 'fp16' | 'off', as resolved for the device
    rank: int
    world_size: int
    ema: ModelEmaV3 | None = None  # the trainer's EMA of the trainable module


@dataclass
class Stage:
    """One step of a pipeline: a training run (`config` gives its config, built when the stage starts, so
    it may read what earlier stages wrote) or a step that writes files (`make`). `folder` is the run's
    folder, or the folder the step writes into. `outputs`: the files the step writes, or those of a run
    that later stages (or the user) take; a stage is done only while they are there."""

    name: str
    folder: Path
    needs: tuple[str, ...] = ()
    config: Callable[[], Config] | None = None
    make: Callable[[], object] | None = None
    outputs: tuple[Path, ...] = ()


def stage_config(mapping: dict, folder: Path, overrides: list[str] | None = None, source: str = "") -> Config:
    """A run config (a resolved config as a mapping, plus `overrides`) placed in run folder `folder`."""
    mapping = {**mapping, "train": {**mapping["train"], "out_dir": str(folder.parent), "name": folder.name}}
    return load_config(mapping, overrides, source=source)


class RecipeModule(nn.Module):
    """The trainable module of a recipe: the MLIC model plus whatever else the recipe trains."""

    def __init__(self, model: MLICModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> dict:
        return self.model(images)

    def predict(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        """Evaluation outputs: `logits` [B, C], and `attention` and `grid` when asked and available."""
        return self.model(images, return_attention=return_attention)

    def per_class_parameters(self) -> list[str]:
        """State-dict names whose first dimension indexes the classes (checkpoints map them by name)."""
        return [f"model.{name}" for name in self.model.per_class_parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return self.model.backbone_parameters()


class Recipe:
    """Supervised multi-label training is `standard`; every other method overrides what it changes."""

    head_outputs: ClassVar[tuple[str, ...]] = ("logits",)  # what training_step reads from the head
    head_inputs: ClassVar[tuple[str, ...]] = ()  # what build_module gives the head's constructor

    def __init__(self, cfg: Config, classes: list[str]):
        self.cfg, self.classes = cfg, classes
        self.criterion = build_loss(cfg.loss)
        self.teachers: dict[str, nn.Module] = {}  # filled by the trainer from teacher_paths()
        self.teacher_classes: dict[str, list[str]] = {}  # each teacher's classes, in its logits' order

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Cross-field checks of this recipe's config, beyond the ranges its fields declare (checked when
        the config loads) and the head's fit (checked before this, by the builder)."""

    @classmethod
    def stages(cls, cfg: Config, root: Path) -> list[Stage]:
        """The runs (and file steps) that make this recipe's result, in order, each in its own folder
        under `root`: one run of `cfg` unless a recipe chains several (teachers, then a student)."""
        return [Stage("train", root / "train", config=lambda: stage_config(cfg.to_dict(), root / "train"),
                      outputs=(root / "train" / "best.pt",))]  # fmt: skip

    @classmethod
    def data_request(cls, cfg: Config) -> DataRequest:
        return DataRequest(views=1, classes=list(cfg.data.classes) or None)

    def build_module(self, trained: dict | None = None) -> RecipeModule:
        return RecipeModule(build_model(self.cfg.model, len(self.classes)))

    @classmethod
    def read_released(cls, path: Path, cfg: Config, classes: list[str], options: ReleaseOptions) -> Released:
        """The official code's released checkpoint at `path` in this recipe's terms: the state dict of
        `build_module()`'s module, the class names of its rows in their order (the official code's; the
        data set's names are `classes`, in the shards' order), and what else the run needs."""
        raise InputError(f"recipe.name={cfg.recipe.name} reads no released checkpoints")

    def initial_weights(self, ckpt: Checkpoint, what: str) -> dict:
        """The state dict that `train.init_from` (`ckpt`, named `what` in errors) starts this run from;
        per-class rows are then matched by class name."""
        return ckpt.model

    def teacher_paths(self) -> dict[str, str]:
        return {}

    def classification(self, logits: torch.Tensor, batch: Batch) -> Term:
        """The configured classification loss (ASL or BCE) as a term."""
        return Term(self.criterion(logits, batch.targets, batch.ignore), self.criterion.reduction)

    def training_step(self, net: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, Term]:
        raise NotImplementedError

    def setup(self, module: RecipeModule, ctx: StepContext) -> None:
        """Build what the recipe derives from the trainable module (e.g. an EMA teacher of it), once, when
        the module is initialised and on its device, before the first step or a resumed state is
        loaded. `module` is the module itself, never a DDP or compiled wrapper."""

    def after_step(self, module: RecipeModule, ctx: StepContext) -> None:
        """Called after every optimiser step, with the module itself (unwrapped)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
