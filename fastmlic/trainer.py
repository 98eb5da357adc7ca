"""A run: built from its config once (fastmlic/builder.py), then `fit()`, the epoch loop with its
evaluations, best weights, checkpoints (fastmlic/checkpointer.py), stop signals and summary.

`Trainer(cfg, dist, resume)` checks the config against the recipe's code, builds the loaders the recipe
asks for, the recipe and its trainable module, EMA, optimiser, scheduler and scaler, restores the newest
training state on resume, and only then makes the run folder: bad input leaves none behind.
"""

from __future__ import annotations

import random
import resource
from pathlib import Path

import numpy as np
import torch

from .builder import (
    build_loaders,
    build_module,
    build_parts,
    check_init_from,
    check_recipe,
    check_weights,
    weights_from_checkpoint,
    wrap_for_training,
)
from .checkpoint import TrainState
from .checkpointer import Checkpointer, check_resume
from .config import Config
from .distributed import Dist, any_rank, broadcast_object
from .engine import (
    DIVERGENCE_HINT,
    EpochProgress,
    EpochStats,
    NonFiniteLoss,
    collapse,
    evaluate,
    train_one_epoch,
)
from .precision import resolve_amp
from .preemption import Preempted, StopSignals
from .recipes.base import RECIPES, StepContext
from .run import RunDir


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
        check_recipe(cfg)
        check_weights(cfg)
        check_init_from(cfg)
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.amp, self.amp_reason = resolve_amp(t.amp, dist.device)
        name = t.name or RunDir.default_name(cfg.data.dataset, cfg.model.backbone)
        self.run = RunDir(resume or Path(t.out_dir) / broadcast_object(name, dist.world_size), dist.is_main,
                          dist.rank)  # fmt: skip
        changed = check_resume(self.run, cfg.to_dict()) if resume else []

        recipe_type = RECIPES.lookup(cfg.recipe.name)
        request = recipe_type.data_request(cfg)
        self.train_loader, self.val_loader = build_loaders(cfg, dist, request)
        self.classes = self.train_loader.info.classes
        self.recipe = recipe_type(weights_from_checkpoint(cfg) if t.init_from else cfg, self.classes)
        self.steps_per_epoch = -(-len(self.train_loader) // cfg.optim.accumulate)
        self.ctx = StepContext(step=0, epoch=0, total_steps=t.epochs * self.steps_per_epoch,
                               device=dist.device, amp=self.amp, rank=dist.rank,
                               world_size=dist.world_size)  # fmt: skip
        self.module, teachers = build_module(cfg, self.recipe, self.ctx, request.views, self.run.log)
        self.parts = build_parts(cfg, self.module, self.recipe, self.steps_per_epoch, self.amp)
        self.checkpoints = Checkpointer(self.run, cfg, dist, self.classes, teachers, self.parts,
                                        self.train_loader, self.val_loader)  # fmt: skip
        self.epoch_losses: list[float] = []  # of the epochs this process ran (a collapse check's history)
        self.collapsed: str | None = None  # why the model looks collapsed at the last epoch, if it does
        self.fresh = not resume  # a new run's folder goes again if it fails before its first step
        if resume:
            self.state = self.checkpoints.restore(changed)
        else:  # made only now: bad input found while building leaves no folder behind
            self.state = TrainState()
            self.run.create(cfg.to_dict())
        if t.tensorboard:
            self.run.enable_tensorboard()
        self.parts.net = wrap_for_training(self.module, cfg, dist)

    def print_summary(self, s: dict) -> None:
        """The run's one summary screen, printed and logged."""
        run, dist = self.run, self.dist
        best = s["best"]
        lines = [
            "=" * 64,
            f"{self.cfg.train.result} mAP {best['mAP']:.4f} ({best['source'] or '-'} weights, epoch "
            f"{best['epoch'] or '-'}, best.pt);  "
            f"raw {s['best_raw_mAP']:.4f}  EMA {s['best_ema_mAP']:.4f}",
        ]
        if s["images_per_s"] is not None:
            lines.append(
                f"last epoch: {s['images_per_s']:.0f} images/s in total, "
                f"{s['images_per_s'] / dist.world_size:.0f} per device x {dist.world_size}; "
                f"data wait {s['data_wait']:.0%} of step time"
            )
        lines.append(f"peak {memory_kind(dist.device)}: {s['peak_memory_mb']:.0f} MB (rank 0)")
        if s["collapsed"]:
            lines.append(f"WARNING: at the last epoch {s['collapsed']}")
        if s["skipped_images"]:
            lines.append(f"skipped unreadable samples: {s['skipped_images']} distinct (the first ones are "
                         "named in log.txt's warnings; list them all: python tools/make_shards.py --verify "
                         "SHARDS)")  # fmt: skip
        files = "best.pt, last.pt, checkpoints/, metrics.jsonl, log.txt, config.yaml"
        lines += [f"run folder: {run.path}  ({files})",
                  f"evaluate:   python -m fastmlic.evaluate --ckpt {run.path / 'best.pt'}",
                  "=" * 64]  # fmt: skip
        run.log("\n" + "\n".join(lines))

    def _after_step(self, progress: EpochProgress) -> None:
        """Save mid-epoch when a checkpoint is due or a stop signal came to any rank; then stop if one
        came. All ranks decide together."""
        flags = [self.signals.received is not None, self.checkpoints.due(self.state.step)]
        signalled, due = any_rank(flags, self.dist.world_size)
        if signalled or due:
            path = self.checkpoints.save(self.state, progress)
            if signalled:
                self._stop_preempted(path)

    def _stop_preempted(self, path: Path) -> None:
        s = self.state
        where = f"epoch {s.epoch + 1}, batch {s.batches}" if s.batches else f"the end of epoch {s.epoch}"
        signal = self.signals.name or "a stop signal on another rank"
        message = (f"preempted by {signal} at step {s.step} ({where}); saved {path}\n"
                   f"continue with: python fastmlic/train.py --resume {self.run.path}")  # fmt: skip
        self.run.log(message)
        raise Preempted(message, self.signals.received)

    def fit(self) -> dict:
        """The epoch loop, listening for stop signals (see fastmlic/preemption.py); errors and warnings
        also go to log.txt."""
        with StopSignals() as self.signals, self.run.capture_warnings():
            try:
                return self._fit()
            except NonFiniteLoss as e:
                saved = self.checkpoints.saved
                kept = (f"the newest checkpoint, {saved[1]} (step {saved[0]}), is from before it"
                        if saved else "no checkpoint was written before it")  # fmt: skip
                error = NonFiniteLoss(f"{e} {kept[0].upper()}{kept[1:]}.")
                self.run.log_error(str(error))
                raise error from None
            except Preempted:
                raise
            except BaseException as e:
                self.run.log_error(f"{type(e).__name__}: {e}")
                if self.fresh and self.state.step == 0:
                    self.run.discard()
                raise

    def _fit(self) -> dict:
        cfg, dist, run, p, s = self.cfg, self.dist, self.run, self.parts, self.state
        t = cfg.train
        run.log(
            f"run {run.path}: recipe {cfg.recipe.name}, {len(self.classes)} classes, "
            f"{self.train_loader.info.num_samples} train / {self.val_loader.info.num_samples} "
            f"{cfg.data.val_split} images, {self.train_loader.backend} data, "
            f"{dist.world_size} x {dist.device.type}, amp {self.amp} ({self.amp_reason}), "
            f"{'channels-last' if t.channels_last else 'contiguous'} tensors"
        )
        ctx = self.ctx
        ctx.step, ctx.epoch, ctx.ema = s.step, s.epoch, p.ema
        self.checkpoints.start_clock()

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
                self._stop_preempted(self.checkpoints.saved[1])
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
        if improved or cfg.train.result == "final":  # "final": the last epoch's weights, whatever they score
            s.best_map, s.best_source, s.best_epoch = metrics[best_name]["mAP"], best_name, s.epoch
            self.checkpoints.save_best(evals[best_name].state_dict(), best_name, metrics[best_name], s)
        self.checkpoints.save(s, None)
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
