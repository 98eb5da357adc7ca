"""Build everything from a config once, then fit: the only place a config becomes objects.

`Trainer(cfg, dist, resume)` builds the run folder, the loaders the recipe asks for, the recipe and
its trainable module (from `train.init_from` by class name, if set), frozen teachers, EMA, optimiser,
scheduler and scaler, restores `last.pt` on resume, and `fit()` runs the epoch loop. Evaluation,
prediction, reports and the benchmarks build through the same functions (`build_recipe`,
`build_loaders`, `load_for_inference`), so a model is built one way everywhere.
"""

from __future__ import annotations

import random
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import Checkpoint, TrainState, class_difference, file_sha256, load_checkpoint, load_weights
from .config import Config, ConfigError, load_config
from .data import Batch, build_loader, split_json
from .distributed import Dist, all_gather_objects, all_reduce_sum, any_rank, broadcast_object
from .engine import (
    DIVERGENCE_HINT,
    EpochProgress,
    EpochStats,
    NonFiniteLoss,
    TrainParts,
    autocast,
    collapse,
    combine_terms,
    evaluate,
    resolve_amp,
    train_one_epoch,
)
from .errors import InputError
from .optim import build_optimizer, build_scheduler
from .preemption import Preempted, StopSignals
from .recipes import RECIPES, DataRequest, Recipe, RecipeModule, StepContext
from .run import RunDir


def memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def build_recipe(cfg: Config, classes: list[str]) -> Recipe:
    return RECIPES.lookup(cfg.recipe.name)(cfg, classes)


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
    module = build_recipe(cfg, ckpt.classes).build_module(trained=ckpt.model)
    load_weights(module, ckpt.model, ckpt.classes, ckpt.classes, [], str(path))
    module = module.to(device, memory_format=memory_format(cfg)).eval()
    return Inference(module, cfg, ckpt, resolve_amp(cfg.train.amp, device))


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


def rng_states(device: torch.device) -> dict:
    """Every random generator a training step may draw from, on this process."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}  # fmt: skip


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"])


def memory_kind(device: torch.device) -> str:
    """What `peak_memory_mb` measures on `device`."""
    return "GPU memory allocated" if device.type == "cuda" else "process RSS"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: process peak RSS


class Trainer:
    def __init__(self, cfg: Config, dist: Dist, resume: Path | None = None):
        self.cfg, self.dist = cfg, dist
        t = cfg.train
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.amp = resolve_amp(t.amp, dist.device)
        name = t.name or RunDir.default_name(cfg.data.dataset, cfg.model.backbone)
        self.run = RunDir(resume or Path(t.out_dir) / broadcast_object(name, dist.world_size), dist.is_main,
                          dist.rank)  # fmt: skip
        changed = self.run.check_resume(cfg.to_dict()) if resume else []

        recipe_type = RECIPES.lookup(cfg.recipe.name)
        request = recipe_type.data_request(cfg)
        self.train_loader, self.val_loader = build_loaders(cfg, dist, request)
        self.classes = self.train_loader.info.classes
        self.recipe = recipe_type(cfg, self.classes)
        self.module = self._build_module(request.views)
        self.parts = self._build_parts()
        self.state = TrainState()
        self.saved: tuple[int, Path] | None = None  # (step, path) of the newest training state written
        self.epoch_losses: list[float] = []  # of the epochs this process ran (a collapse check's history)
        self.collapsed: str | None = None  # why the model looks collapsed at the last epoch, if it does
        if resume:
            self._restore(changed)
        else:  # made only now: bad input found while building leaves no folder behind
            self.run.create(cfg.to_dict())
        if t.tensorboard:
            self.run.enable_tensorboard()
        net = torch.compile(self.module) if t.compile else self.module
        if dist.world_size > 1:
            device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=device_ids)
        self.parts.net = net

    def _build_module(self, views: int) -> RecipeModule:
        """The recipe's trainable module on the device: initialised from `train.init_from` by class name,
        its teachers loaded, what no loss term reaches frozen, BatchNorm synchronised if asked."""
        cfg, dist, t = self.cfg, self.dist, self.cfg.train
        module = self.recipe.build_module()
        if t.init_from:
            init, what = load_checkpoint(t.init_from), f"train.init_from {t.init_from}"
            weights = self.recipe.initial_weights(init, what)
            notes = load_weights(module, weights, init.classes, self.classes, module.per_class_parameters(),
                                 what, strict=False)  # fmt: skip
            for note in notes:
                self.run.log(note)
        module = module.to(dist.device, memory_format=memory_format(cfg))
        self.teacher_refs = self._load_teachers()
        # frozen before EMA, the optimiser and DDP see it (and before SyncBN, whose forward would start
        # collectives in this one-process probe)
        unused = freeze_unused(self.recipe, module, cfg, views, dist.device, self.amp)
        if unused:
            shown = ", ".join(unused[:4]) + (", ..." if len(unused) > 4 else "")
            self.run.log(f"frozen: {len(unused)} parameters that no loss term of recipe {cfg.recipe.name} "
                         f"with head {cfg.model.head} reaches ({shown})")  # fmt: skip
        if t.sync_bn and dist.world_size > 1:
            if dist.device.type != "cuda":
                raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return module

    def _build_parts(self) -> TrainParts:
        """EMA, optimiser, per-step schedule and loss scaler around the trainable module."""
        cfg = self.cfg
        ema = None
        if cfg.ema.enabled:
            from timm.utils import ModelEmaV3  # not at import: timm takes seconds

            ema = ModelEmaV3(self.module, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
        optimizer = build_optimizer(self.module, cfg.optim)
        self.steps_per_epoch = per_epoch = -(-len(self.train_loader) // cfg.optim.accumulate)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs * per_epoch, per_epoch)
        scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        return TrainParts(self.module, self.module, self.recipe, optimizer, scheduler, scaler, ema,
                          cfg.optim.accumulate, cfg.optim.grad_clip)  # fmt: skip

    def _load_teachers(self) -> dict[str, dict[str, str]]:
        """Frozen models the recipe reads: built from their checkpoints, in eval mode, outside DDP, the
        optimiser and EMA; referenced in our checkpoints by path and sha256, never copied."""
        refs = {}
        for name, path in self.recipe.teacher_paths().items():
            loaded = load_for_inference(path, [], self.dist.device)
            self.recipe.teachers[name] = loaded.module.requires_grad_(False)
            self.recipe.teacher_classes[name] = loaded.classes
            refs[name] = {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
        return refs

    def _restore(self, changed: list[str]) -> None:
        """Load the newest readable training state: weights, optimiser, schedule, EMA, scaler, recipe
        state, each rank's random generators and its loader's position in the epoch."""
        cfg, p, run = self.cfg, self.parts, self.run
        ckpt, path = run.load_training_state()
        where = f"--resume {run.path}"
        load_weights(self.module, ckpt.model, ckpt.classes, self.classes, [], f"{where} ({path.name})")
        for name, ref in ckpt.teachers.items():
            now = self.teacher_refs.get(name, {}).get("sha256")
            if now != ref["sha256"]:
                raise InputError(f"{where}: teacher {name!r} ({ref['path']}) is not the file the run started "
                                 f"with (sha256 {ref['sha256'][:12]}, now {str(now)[:12]})")  # fmt: skip
        self._check_changes(ckpt, changed)
        p.optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.config["train"]["epochs"] == cfg.train.epochs:
            p.scheduler.load_state_dict(ckpt.scheduler)
        else:  # the schedule built for the new length, at the step reached
            p.scheduler.last_epoch = ckpt.state.step - 1
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": meant here
                warnings.simplefilter("ignore", UserWarning)
                p.scheduler.step()
        if p.ema is not None:
            p.ema.load_state_dict(ckpt.ema)
        if p.scaler is not None:
            p.scaler.load_state_dict(ckpt.scaler)
        self.recipe.load_state_dict(ckpt.recipe)
        self.state, rank = ckpt.state, self.dist.rank
        if ckpt.ranks and len(ckpt.ranks) == self.dist.world_size:
            set_rng_states(ckpt.ranks[rank]["rng"])
            self.train_loader.load_state_dict(ckpt.ranks[rank]["loader"])
        elif self.state.batches:
            raise InputError(f"{where}: {path.name} was saved mid-epoch by {len(ckpt.ranks)} processes; "
                             f"resume it with as many (now {self.dist.world_size})")  # fmt: skip
        else:  # a version-1 file, or another world size at an epoch's end: the epoch order is seeded
            torch.set_rng_state(ckpt.rng if ckpt.rng is not None else ckpt.ranks[0]["rng"]["torch"])
            if self.train_loader.backend == "dali":
                run.log(f"warning: {path.name} holds no DALI state for {self.dist.world_size} processes; "
                        "DALI's shuffling starts afresh")  # fmt: skip
        dropped = run.rewind_metrics(self.state.step, self.state.epoch)
        if changed:
            run.write_config(cfg.to_dict())
        self.saved = (self.state.step, path)
        position = f", batch {self.state.batches}/{len(self.train_loader)}" if self.state.batches else ""
        dropped = f"; dropped {dropped} metrics rows written after it" if dropped else ""
        run.log(f"resumed {run.path} from {path.name}: epoch {self.state.epoch + 1}{position}, step "
                f"{self.state.step}{dropped}")  # fmt: skip

    def _check_changes(self, ckpt: Checkpoint, changed: list[str]) -> None:
        """The keys that may change on resume under a condition: a longer run, shards that moved."""
        cfg, where = self.cfg, f"--resume {self.run.path}"
        old_epochs = ckpt.config["train"]["epochs"]
        if "train.epochs" in changed:
            if cfg.train.epochs < old_epochs:
                raise InputError(f"{where}: train.epochs={cfg.train.epochs} is shorter than the run's "
                                 f"{old_epochs}; a resumed run may only get longer")  # fmt: skip
            self.run.log(f"train.epochs: {old_epochs} -> {cfg.train.epochs}; the learning-rate schedule "
                         f"is that of the new length from step {ckpt.state.step} on")  # fmt: skip
        if "data.shards" in changed:
            now = self._split_sizes()
            if ckpt.data and ckpt.data != now:
                raise InputError(f"{where}: data.shards={cfg.data.shards} holds other splits than the run's "
                                 f"({now} samples, the run had {ckpt.data})")  # fmt: skip
            sizes = " and split sizes" if ckpt.data else "; this checkpoint records no split sizes"
            self.run.log(f"data.shards: {ckpt.config['data']['shards']} -> {cfg.data.shards} (same classes"
                         f"{sizes})")  # fmt: skip

    def _checkpoint(self, kind: str, weights: dict, **extra) -> dict:
        return Checkpoint(kind=kind, classes=self.classes, config=self.cfg.to_dict(), model=weights,
                          teachers=self.teacher_refs, **extra).to_dict()  # fmt: skip

    def _training_state(self, progress: EpochProgress | None) -> dict | None:
        """Everything to continue from here, on rank 0 (None elsewhere): every rank sends its random
        generators and its loader's position; `progress` is the unfinished epoch's, if any."""
        p, s, world = self.parts, self.state, self.dist.world_size
        s.batches = progress.batches if progress else 0
        s.epoch_loss_sum = all_reduce_sum([progress.loss_sum()], world)[0] if progress else 0.0
        mine = {"rng": rng_states(self.dist.device), "loader": self.train_loader.state_dict()}
        ranks = all_gather_objects(mine, world)
        if not self.dist.is_main:
            return None
        return self._checkpoint(
            "last", self.module.state_dict(), state=s, ema=p.ema.state_dict() if p.ema is not None else None,
            optimizer=p.optimizer.state_dict(), scheduler=p.scheduler.state_dict(),
            scaler=p.scaler.state_dict() if p.scaler else None, recipe=self.recipe.state_dict(), ranks=ranks,
            data=self._split_sizes(),
        )  # fmt: skip

    def _split_sizes(self) -> dict[str, int]:
        """What a checkpoint records of the data, so a resume can tell moved shards from other ones."""
        return {"train": self.train_loader.info.num_samples, "val": self.val_loader.info.num_samples}

    def _save(self, progress: EpochProgress | None) -> Path:
        state = self._training_state(progress)
        path = self.run.save_training_state(state, self.state.step, end_of_epoch=progress is None,
                                            keep=self.cfg.train.keep_checkpoints)  # fmt: skip
        self.saved, self._saved_at = (self.state.step, path), time.monotonic()
        return path

    def _after_step(self, progress: EpochProgress) -> None:
        """Save mid-epoch when a checkpoint is due (every N steps, M minutes by rank 0's clock) or a
        stop signal came to any rank; then stop if one came. All ranks decide together."""
        t, step = self.cfg.train, self.state.step
        by_steps = bool(t.checkpoint_every_steps) and step % t.checkpoint_every_steps == 0
        by_time = (self.dist.is_main and bool(t.checkpoint_every_minutes)
                   and time.monotonic() - self._saved_at >= 60 * t.checkpoint_every_minutes)  # fmt: skip
        flags = [self.signals.received is not None, by_steps or by_time]
        signalled, due = any_rank(flags, self.dist.world_size)
        if signalled or due:
            path = self._save(progress)
            if signalled:
                self._stop_preempted(path)

    def _stop_preempted(self, path: Path) -> None:
        s = self.state
        where = f"epoch {s.epoch + 1}, batch {s.batches}" if s.batches else f"the end of epoch {s.epoch}"
        signal = self.signals.name or "a stop signal on another rank"
        message = (f"preempted by {signal} at step {s.step} ({where}); saved {path}\n"
                   f"continue with: python fastmlic/train.py --resume {self.run.path}")  # fmt: skip
        self.run.log(message)
        raise Preempted(message)

    def fit(self) -> dict:
        """The epoch loop, listening for stop signals (see fastmlic/preemption.py); errors and warnings
        also go to log.txt."""
        with StopSignals() as self.signals, self.run.capture_warnings():
            try:
                return self._fit()
            except NonFiniteLoss as e:
                kept = (f"the newest checkpoint, {self.saved[1]} (step {self.saved[0]}), is from before it"
                        if self.saved else "no checkpoint was written before it")  # fmt: skip
                error = NonFiniteLoss(f"{e} {kept[0].upper()}{kept[1:]}.")
                self.run.log_error(str(error))
                raise error from None
            except Preempted:
                raise
            except BaseException as e:
                self.run.log_error(f"{type(e).__name__}: {e}")
                raise

    def _fit(self) -> dict:
        cfg, dist, run, p, s = self.cfg, self.dist, self.run, self.parts, self.state
        t = cfg.train
        run.log(
            f"run {run.path}: recipe {cfg.recipe.name}, {len(self.classes)} classes, "
            f"{self.train_loader.info.num_samples} train / {self.val_loader.info.num_samples} "
            f"{cfg.data.val_split} images, {self.train_loader.backend} data, "
            f"{dist.world_size} x {dist.device.type}, amp {self.amp}"
        )
        ctx = StepContext(step=s.step, epoch=s.epoch, total_steps=t.epochs * self.steps_per_epoch,
                          device=dist.device, amp=self.amp, rank=dist.rank, world_size=dist.world_size,
                          ema=p.ema)  # fmt: skip
        self._saved_at = time.monotonic()

        def after_step(progress: EpochProgress) -> None:
            s.step = ctx.step
            self._after_step(progress)

        last_stats: EpochStats | None = None
        epochs_run = 0
        for epoch in range(s.epoch, t.epochs):
            start = None
            if s.batches:  # resumed mid-epoch: the loader is there already
                start = EpochProgress(s.batches, s.epoch_loss_sum if dist.is_main else 0.0)
            else:
                self.train_loader.set_epoch(epoch)
            ctx.epoch = epoch
            log = lambda row, e=epoch: run.record({"kind": "train", "epoch": e, **row})  # noqa: E731
            stats = train_one_epoch(p, self.train_loader, ctx, log_every=t.log_every, on_log=log,
                                    progress=dist.is_main, start=start, after_step=after_step)  # fmt: skip
            s.step, s.epoch, s.batches = ctx.step, epoch + 1, 0
            self._end_of_epoch(stats)
            last_stats, epochs_run = stats, epochs_run + 1
            if any_rank([self.signals.received is not None], dist.world_size)[0]:
                self._stop_preempted(self.saved[1])
            if t.patience and s.bad_epochs >= t.patience:
                run.log(f"early stop: no better mAP for {t.patience} epochs")
                break
            if t.stop_after and epochs_run >= t.stop_after and epoch + 1 < t.epochs:
                run.log(f"stopping after {epochs_run} epochs as asked (train.stop_after); continue with "
                        f"--resume {run.path}")  # fmt: skip
                break
        summary = {
            "run": str(run.path),
            # all epochs done or stopped early; false after train.stop_after (--resume continues)
            "finished": s.epoch >= t.epochs or bool(t.patience and s.bad_epochs >= t.patience),
            "classes": self.classes,
            "best": {"mAP": s.best_map, "source": s.best_source, "epoch": s.best_epoch},
            "best_raw_mAP": s.best_raw,
            "best_ema_mAP": s.best_ema,
            "epochs": s.epoch,
            "images_per_s": last_stats.images_per_s if last_stats else None,
            "data_wait": last_stats.data_wait if last_stats else None,
            "peak_memory_mb": peak_memory_mb(dist.device),
            # distinct images: an evaluation image is met once per evaluation (raw, EMA) and epoch
            "skipped_images": len({(shard, key) for shard, key, _ in
                                   self.train_loader.skipped + self.val_loader.skipped}),  # fmt: skip
            "collapsed": self.collapsed,
        }
        run.write_json("summary.json", summary)
        return summary

    def _end_of_epoch(self, stats: EpochStats) -> None:
        """Evaluate raw and EMA weights, record the epoch, keep best.pt and the training state."""
        cfg, dist, p, s = self.cfg, self.dist, self.parts, self.state
        evals = {"raw": self.module} if p.ema is None else {"raw": self.module, "ema": p.ema.module}
        where = dict(device=dist.device, amp=self.amp, world_size=dist.world_size)
        metrics = {name: evaluate(m, self.val_loader, threshold=cfg.train.threshold,
                                  headline=cfg.train.map_flavour, **where)
                   for name, m in evals.items()}  # fmt: skip
        candidates = [n for n in metrics if cfg.train.select_from in ("both", n)]
        best_name = max(candidates, key=lambda n: metrics[n]["mAP"])
        s.best_raw = max(s.best_raw, metrics["raw"]["mAP"])
        s.best_ema = max(s.best_ema, metrics["ema"]["mAP"] if "ema" in metrics else -1.0)
        improved = metrics[best_name]["mAP"] > s.best_map
        s.bad_epochs = 0 if improved else s.bad_epochs + 1
        row = {"kind": "epoch", "epoch": s.epoch, "step": s.step, "loss": stats.loss,
               "lr": p.optimizer.param_groups[-1]["lr"], "images_per_s": stats.images_per_s,
               "images_per_s_per_device": stats.images_per_s / dist.world_size, "data_wait": stats.data_wait,
               "seconds": stats.seconds, "peak_memory_mb": peak_memory_mb(dist.device),
               "peak_memory_kind": memory_kind(dist.device)}  # fmt: skip
        for name, m in metrics.items():
            row.update({f"{name}_{k}": v for k, v in m.items() if k != "ap"})
            row[f"{name}_ap"] = m["ap"]
        self.run.record(row)
        if improved:
            s.best_map, s.best_source, s.best_epoch = metrics[best_name]["mAP"], best_name, s.epoch
            self.run.save("best.pt", self._checkpoint("best", evals[best_name].state_dict(), source=best_name,
                                                      metrics=metrics[best_name], state=s))  # fmt: skip
        self._save(None)
        self.run.log(
            f"epoch {s.epoch}/{cfg.train.epochs}  loss {stats.loss:.4g}  mAP raw {metrics['raw']['mAP']:.4f}"
            + (f"  ema {metrics['ema']['mAP']:.4f}" if "ema" in metrics else "")
            + f"  {stats.images_per_s:.0f} img/s  data wait {stats.data_wait:.0%}"
        )
        self.epoch_losses.append(stats.loss)
        why = collapse(max(m["score_std_max"] for m in metrics.values()), self.epoch_losses)
        self.collapsed = None if why is None else f"the model looks collapsed: {why}; {DIVERGENCE_HINT}"
        if self.collapsed:
            self.run.log(f"warning: {self.collapsed}")
