"""The one place a config becomes objects: the checks that need the heads' and recipes' code, the
loaders a recipe asks for, the recipe and its trainable module (initialised, with its teachers and what
it derives from the module), EMA, optimiser, schedule and scaler. The trainer builds a run through these
functions, and evaluation, prediction, reports and the benchmarks rebuild a checkpoint through
`load_for_inference`, so a model is built one way everywhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint, class_difference, file_sha256, load_checkpoint, load_weights
from .config import Config, ConfigError, ModelConfig, load_config
from .data import Batch, build_loader, split_json
from .distributed import Dist
from .engine import TrainParts, combine_terms
from .errors import InputError, MissingInput
from .models import HEADS
from .models.hub import weights_source
from .optim import build_optimizer, build_scheduler
from .precision import autocast, resolve_amp
from .recipes.base import RECIPES, DataRequest, Recipe, RecipeModule, StepContext
from .registry import UnknownName

HEAD_KEYS = ("drop_rate", "embed_dim", "heads")  # the model section's keys that only some heads read
HEAD_DEFAULTS = {k: getattr(ModelConfig(), k) for k in HEAD_KEYS}


def check_recipe(cfg: Config) -> None:
    """That `model.head` is a known head that gives what the recipe reads, needs nothing the recipe does
    not give and reads every head key set away from its default; and the recipe's own cross-field
    checks. Made before anything of a run is built (they import the recipes' training code, so
    `--help`, which loads configs only, leaves them out)."""
    try:
        head = HEADS.lookup(cfg.model.head)
        recipe = RECIPES.lookup(cfg.recipe.name)  # a config registered without its training code
    except UnknownName as e:
        raise ConfigError(str(e)) from None
    missing = [o for o in recipe.head_outputs if o not in head.outputs]
    if missing:
        fits = [name for name, h in HEADS.items() if all(o in h.outputs for o in recipe.head_outputs)]
        raise ConfigError(f"recipe.name={cfg.recipe.name} needs {', '.join(missing)} from the head, which "
                          f"model.head={cfg.model.head} does not give; use model.head={' or '.join(fits)}")
    unmet = [n for n in getattr(head, "needs", ()) if n not in recipe.head_inputs]
    if unmet:
        givers = [name for name, r in RECIPES.items() if all(n in r.head_inputs for n in head.needs)]
        raise ConfigError(f"model.head={cfg.model.head} needs {', '.join(unmet)}, which recipe.name="
                          f"{cfg.recipe.name} does not give; use recipe.name={' or '.join(givers)}")
    unused = [k for k in HEAD_KEYS if k not in head.model_keys and getattr(cfg.model, k) != HEAD_DEFAULTS[k]]
    if unused:
        reads = ", ".join(f"model.{k}" for k in head.model_keys) or "none of them"
        raise ConfigError(f"{', '.join(f'model.{k}={getattr(cfg.model, k)}' for k in unused)}: model.head="
                          f"{cfg.model.head} does not use it (of {', '.join(HEAD_KEYS)} it reads {reads}); "
                          "leave it out")  # fmt: skip
    recipe.check(cfg)


def check_weights(cfg: Config) -> None:
    """That the ImageNet weights `model.pretrained` asks for can be had (cached, or the hub answers), in
    seconds and before any data is read; a run started from a checkpoint (`train.init_from`) needs none."""
    if cfg.model.pretrained and not cfg.model.pretrained_path and not cfg.train.init_from:
        weights_source(cfg.model.backbone)


def memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def build_recipe(cfg: Config, classes: list[str]) -> Recipe:
    return RECIPES.lookup(cfg.recipe.name)(cfg, classes)


def check_init_from(cfg: Config) -> None:
    """That `train.init_from` names a checkpoint, before any data is read. A recipe whose stages chain
    (one run starting from another's) is run whole by the pipeline command: the error says so."""
    path = cfg.train.init_from
    if not path or Path(path).exists():
        return
    stages = RECIPES.lookup(cfg.recipe.name).stages(cfg, Path(cfg.train.out_dir) / "PIPELINE")
    names = ", ".join(s.name for s in stages)
    chained = (f"; this recipe's stages ({names}) run in order, each from the one before, with python -m "
               "fastmlic.pipeline --cfg PRESET") if len(stages) > 1 else ""  # fmt: skip
    raise MissingInput(f"train.init_from={path}: no such checkpoint{chained}")


def weights_from_checkpoint(cfg: Config) -> Config:
    """`cfg` for building a module whose weights a checkpoint then replaces (`train.init_from`,
    inference): ImageNet weights are not fetched, only to be overwritten (and an offline machine can
    evaluate a run that started from them)."""
    model = dataclasses.replace(cfg.model, pretrained=False, pretrained_path=None)
    return dataclasses.replace(cfg, model=model)


def build_loaders(cfg: Config, dist: Dist, request: DataRequest):
    """(train, val) loaders for this rank, with the recipe's views and class subset."""
    where = dict(rank=dist.rank, world_size=dist.world_size, device=dist.device, seed=cfg.train.seed,
                 classes=request.classes)  # fmt: skip
    train_json = split_json(cfg.data, cfg.data.train_split)
    train = build_loader(train_json, cfg.data, train=True, views=request.views, **where)
    val = build_loader(split_json(cfg.data, cfg.data.val_split), cfg.data, train=False, **where)
    difference = class_difference(train.info.classes, val.info.classes)
    if difference:
        raise InputError(f"split {cfg.data.val_split!r} has other classes than {cfg.data.train_split!r}: "
                         f"{difference}")  # fmt: skip
    return train, val


@dataclass
class Inference:
    """A checkpoint rebuilt for prediction: the recipe's module in eval mode on the device."""

    module: RecipeModule
    cfg: Config
    checkpoint: Checkpoint
    amp: str

    @property
    def classes(self) -> list[str]:
        return self.checkpoint.classes


def load_for_inference(path: str | Path, overrides: list[str], device: torch.device) -> Inference:
    """Rebuild a run's trainable module from its checkpoint's config and classes (any recipe), with
    command-line `overrides` of that config (e.g. --data.shards)."""
    ckpt = load_checkpoint(path)
    cfg = load_config(ckpt.config, overrides, source=f"{path} (its config)")
    check_recipe(cfg)
    module = build_recipe(weights_from_checkpoint(cfg), ckpt.classes).build_module(trained=ckpt.model)
    load_weights(module, ckpt.model, ckpt.classes, ckpt.classes, [], str(path))
    module = module.to(device, memory_format=memory_format(cfg)).eval()
    return Inference(module, cfg, ckpt, resolve_amp(cfg.train.amp, device)[0])


def load_teachers(recipe: Recipe, device: torch.device) -> dict[str, dict[str, str]]:
    """Frozen models the recipe reads: built from their checkpoints, in eval mode, outside DDP, the
    optimiser and EMA; returned as references (path and sha256) for our checkpoints, never copied."""
    refs = {}
    for name, path in recipe.teacher_paths().items():
        loaded = load_for_inference(path, [], device)
        recipe.teachers[name] = loaded.module.requires_grad_(False)
        recipe.teacher_classes[name] = loaded.classes
        refs[name] = {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
    return refs


def freeze_unused(recipe: Recipe, module: RecipeModule, cfg: Config, views: int, device: torch.device,
                  amp: str) -> list[str]:  # fmt: skip
    """Freeze (and name) the trainable parameters that no loss term of the recipe reaches, found by one
    probe step on two synthetic images (every label positive). A head that reads only tokens leaves a
    backbone's own pooling head unused (ConvNeXt's head norm, a ViT's fc_norm); under DDP such a
    parameter stalls the gradient reduction. Randomness and buffers (BatchNorm statistics) are restored
    afterwards."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    buffers = {k: v.clone() for k, v in module.state_dict().items()}
    size, num_classes = cfg.data.image_size, len(recipe.classes)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        images = torch.randn(2, 3, size, size, device=device).contiguous(memory_format=memory_format(cfg))
        batch = Batch([images] * views, torch.ones(2, num_classes, device=device), None, ["probe0", "probe1"])
        ctx = StepContext(step=0, epoch=0, total_steps=1, device=device, amp=amp, rank=0, world_size=1)
        module.train()
        with autocast(device, amp):
            loss, _ = combine_terms(recipe.training_step(module, batch, ctx), 1, 1)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    module.load_state_dict(buffers)
    unused = [(n, p) for (n, p), g in zip(named, grads, strict=True) if g is None]
    for _, param in unused:
        param.requires_grad_(False)
    return [n for n, _ in unused]


def build_module(cfg: Config, recipe: Recipe, ctx: StepContext, views: int,
                 log: Callable[[str], None]) -> tuple[RecipeModule, dict[str, dict[str, str]]]:  # fmt: skip
    """The recipe's trainable module on the device, and its teachers' references: initialised from
    `train.init_from` by class name, the teachers loaded, the recipe's `setup` given the module, what no
    loss term reaches frozen, BatchNorm synchronised if asked."""
    t = cfg.train
    module = recipe.build_module()
    if t.init_from:
        init, what = load_checkpoint(t.init_from), f"train.init_from {t.init_from}"
        weights = recipe.initial_weights(init, what)
        for note in load_weights(module, weights, init.classes, recipe.classes, module.per_class_parameters(),
                                 what, strict=False):  # fmt: skip
            log(note)
    module = module.to(ctx.device, memory_format=memory_format(cfg))
    teachers = load_teachers(recipe, ctx.device)
    recipe.setup(module, ctx)
    # frozen before EMA, the optimiser and DDP see it (and before SyncBN, whose forward would start
    # collectives in this one-process probe)
    unused = freeze_unused(recipe, module, cfg, views, ctx.device, ctx.amp)
    if unused:
        shown = ", ".join(unused[:4]) + (", ..." if len(unused) > 4 else "")
        log(f"frozen: {len(unused)} parameters that no loss term of recipe {cfg.recipe.name} with head "
            f"{cfg.model.head} reaches ({shown})")  # fmt: skip
    if t.sync_bn and ctx.world_size > 1:
        if ctx.device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module, teachers


def build_parts(cfg: Config, module: RecipeModule, recipe: Recipe, steps_per_epoch: int,
                amp: str) -> TrainParts:  # fmt: skip
    """EMA, optimiser, per-step schedule and loss scaler around the trainable module (`net`, what runs
    forward, is the module itself until the trainer wraps it)."""
    ema = None
    if cfg.ema.enabled:
        from timm.utils import ModelEmaV3  # not at import: timm takes seconds

        ema = ModelEmaV3(module, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
    optimizer = build_optimizer(module, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs * steps_per_epoch, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return TrainParts(module, module, recipe, optimizer, scheduler, scaler, ema, cfg.optim.accumulate,
                      cfg.optim.grad_clip)  # fmt: skip


def wrap_for_training(module: RecipeModule, cfg: Config, dist: Dist) -> torch.nn.Module:
    """What runs forward in training: the module, compiled if asked, in DDP over several processes."""
    net = torch.compile(module) if cfg.train.compile else module
    if dist.world_size > 1:
        device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return net
