"""train_one_epoch and evaluate: functions of built objects and a small context; nothing here reads a
config file, and nothing here knows a training method: recipes give named loss terms."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .distributed import all_gather_objects, all_reduce_sum
from .errors import UserError
from .metrics import multilabel_metrics
from .precision import autocast
from .recipes.base import Recipe, StepContext, Term


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the message says at which step and what to try."""


# what to try when training diverges: a NaN loss, or a model whose scores no longer depend on the image
DIVERGENCE_HINT = "try a lower optim.lr, optim.grad_clip, or train.amp=bf16 instead of fp16"


@dataclass
class EpochStats:
    loss: float  # mean training loss per step, of the global batch
    images: int  # images seen on all ranks
    seconds: float
    data_wait: float  # share of the epoch the loop spent blocked on the loader (mean over ranks)
    steps: int

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class TrainParts:
    """What a training epoch works with, built once by the trainer."""

    net: nn.Module  # what runs forward: the trainable module, compiled and/or wrapped in DDP
    module: nn.Module  # the trainable module itself (the optimiser's and EMA's)
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    ema: object | None = None  # timm ModelEmaV3 of `module`
    accumulate: int = 1
    grad_clip: float = 0.0


def combine_terms(
    terms: dict[str, Term], world_size: int, accumulate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what to back-propagate, this rank's loss in global-batch units): each term weighted and scaled
    by its reduction, so N ranks x k micro-batches step as one process on the global batch."""
    backward = sum(t.weight * t.backward_scale(world_size, accumulate) * t.value for t in terms.values())
    report = sum(t.weight * t.report_scale(world_size) * t.value.detach() for t in terms.values())
    return backward, report


class EpochProgress:
    """How far this rank is in an epoch: batches done and the sum of their losses (kept on the device
    until read). A resumed epoch starts from a checkpoint's `batches` and `loss_sum`."""

    def __init__(self, batches: int = 0, loss_sum: float = 0.0):
        self.batches, self.carried = batches, loss_sum
        self.losses: list[torch.Tensor] = []

    def loss_sum(self) -> float:
        # float64: the sum of float32 losses is then exact, so a resumed epoch's mean equals an
        # uninterrupted one's whatever the split
        return self.carried + (torch.stack(self.losses).double().sum().item() if self.losses else 0.0)


def train_step(p: TrainParts, batch, ctx: StepContext, last_micro: bool = True) -> tuple[torch.Tensor, dict]:
    """Forward and backward of one (micro-)batch, then, on the last micro-batch of a step, the optimiser
    step with clipping, loss scaling, schedule, EMA and the recipe's hook. Returns this rank's loss in
    global-batch units (a device tensor: nothing here waits for the GPU) and the recipe's terms."""
    no_sync = not last_micro and hasattr(p.net, "no_sync")
    with p.net.no_sync() if no_sync else contextlib.nullcontext():
        with autocast(ctx.device, ctx.amp):
            terms = p.recipe.training_step(p.net, batch, ctx)
        backward, loss = combine_terms(terms, ctx.world_size, p.accumulate)
        (p.scaler.scale(backward) if p.scaler else backward).backward()
    if last_micro:
        if p.scaler:
            p.scaler.unscale_(p.optimizer)
        if p.grad_clip > 0:
            nn.utils.clip_grad_norm_(p.module.parameters(), p.grad_clip)
        if p.scaler:
            p.scaler.step(p.optimizer)
            p.scaler.update()
        else:
            p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)
        p.scheduler.step()
        ctx.step += 1
        if p.ema is not None:
            p.ema.update(p.module, step=ctx.step)
        p.recipe.after_step(p.module, ctx)
    return loss, terms


def train_one_epoch(
    parts: TrainParts, loader, ctx: StepContext, *, log_every: int = 20, on_log=None, progress: bool = False,
    start: EpochProgress | None = None, after_step=None,
) -> EpochStats:  # fmt: skip
    """One pass over `loader`, or its rest from `start` (the loader is positioned there already);
    `ctx.step` counts optimiser steps. Logged losses are those of the global batch (averaged over
    ranks), as one process would report them. `after_step(progress)` runs after each optimiser step
    (the trainer checkpoints there) and may raise to end the epoch."""
    p = parts
    p.net.train()
    total_batches = len(loader)
    done = start or EpochProgress()
    first = done.batches
    bar = tqdm(total=total_batches, initial=first, disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=1.0)  # fmt: skip
    images, wait = 0, 0.0
    start_time = time.perf_counter()
    it = iter(loader)
    for i in range(first, total_batches):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        last_micro = (i + 1) % p.accumulate == 0 or i + 1 == total_batches
        loss, terms = train_step(p, batch, ctx, last_micro)
        done.losses.append(loss)
        done.batches = i + 1
        images += len(batch)
        # reading a loss waits for the GPU: only on logged steps, whose row reads it anyway
        if last_micro and ctx.step % log_every == 0:
            row = _step_row(loss, terms, ctx, p.optimizer.param_groups[-1]["lr"])
            if not math.isfinite(row["loss"]):
                raise NonFiniteLoss(f"loss is {row['loss']} at step {ctx.step}; {DIVERGENCE_HINT}.")
            if on_log:
                on_log(row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
        if last_micro and after_step is not None and done.batches < total_batches:
            after_step(done)
        bar.update(1)
    bar.close()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - start_time
    batches = done.batches
    loss_sum = all_reduce_sum([done.loss_sum()], ctx.world_size)[0]
    mean_loss = loss_sum / max(1, batches * ctx.world_size)
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(
            f"mean training loss is {mean_loss} in the epoch ending at step {ctx.step}; {DIVERGENCE_HINT}."
        )
    images_all, wait_sum = all_reduce_sum([images, wait / seconds], ctx.world_size)
    # images/s and data wait: the batches this process ran (all of them unless the epoch was resumed)
    return EpochStats(mean_loss, int(images_all), seconds, wait_sum / ctx.world_size, batches - first)


def _step_row(loss: torch.Tensor, terms: dict[str, Term], ctx: StepContext, lr: float) -> dict:
    """The metrics row of a logged step: the loss and each term in global-batch units, averaged over
    ranks (one sync per log interval, not per step; every rank joins)."""
    names = list(terms)
    local = [loss.item()] + [terms[n].report_scale(ctx.world_size) * terms[n].value.item() for n in names]
    values = [v / ctx.world_size for v in all_reduce_sum(local, ctx.world_size)]
    return {"step": ctx.step, "loss": values[0], "lr": lr,
            **{f"loss_{n}": v for n, v in zip(names, values[1:], strict=True)}}  # fmt: skip


@torch.no_grad()
def collect_predictions(model: nn.Module, loader, *, device: torch.device, amp: str, progress: bool = False,
                        return_attention: bool = False) -> dict:  # fmt: skip
    """This rank's sample keys with their sigmoid scores, targets and ignore mask (numpy). `model` is a
    recipe's trainable module (raw or EMA): its `predict` gives the logits."""
    model.eval()
    keys, scores, targets, ignore, attention = [], [], [], [], []
    for batch in tqdm(loader, disable=not progress, leave=False, dynamic_ncols=True, mininterval=1.0):
        with autocast(device, amp):
            out = model.predict(batch.images, return_attention=return_attention)
        keys += batch.keys
        scores.append(torch.sigmoid(out["logits"].float()).cpu().numpy())
        targets.append(batch.targets.cpu().numpy().astype(np.uint8))
        if batch.ignore is not None:
            ignore.append(batch.ignore.cpu().numpy())
        if return_attention and "attention" in out:
            attention.append(out["attention"].float().cpu().numpy())
            grid = out["grid"]
    num_classes = loader.info.num_classes
    result = {
        "keys": keys,
        "scores": np.concatenate(scores) if scores else np.zeros((0, num_classes), np.float32),
        "targets": np.concatenate(targets) if targets else np.zeros((0, num_classes), np.uint8),
        "ignore": np.concatenate(ignore) if ignore else None,
    }
    if attention:
        result["attention"] = np.concatenate(attention)  # [N, C, H * W]
        result["grid"] = grid  # (H, W) of the attention's tokens
    return result


def gather_predictions(local: dict, world_size: int) -> dict:
    """Every rank's predictions, matched by key and sorted by key; no sample counted twice."""
    parts = all_gather_objects({k: v for k, v in local.items() if k not in ("attention", "grid")}, world_size)
    keys = [k for p in parts for k in p["keys"]]
    scores = np.concatenate([p["scores"] for p in parts])
    targets = np.concatenate([p["targets"] for p in parts])
    has_ignore = parts[0]["ignore"] is not None
    ignore = np.concatenate([p["ignore"] for p in parts]) if has_ignore else None
    order = sorted(range(len(keys)), key=keys.__getitem__)
    unique = [i for n, i in enumerate(order) if n == 0 or keys[i] != keys[order[n - 1]]]
    return {
        "keys": [keys[i] for i in unique],
        "scores": scores[unique],
        "targets": targets[unique],
        "ignore": ignore[unique] if has_ignore else None,
    }


def evaluate(model: nn.Module, loader, *, device: torch.device, amp: str, world_size: int,
             threshold: float, headline: str, progress: bool = False) -> dict:  # fmt: skip
    """Metrics over the whole split, computed from the predictions of every rank."""
    preds = gather_predictions(collect_predictions(model, loader, device=device, amp=amp, progress=progress),
                               world_size)  # fmt: skip
    metrics = multilabel_metrics(preds["scores"], preds["targets"], preds["ignore"], threshold, headline)
    metrics["num_samples"] = len(preds["keys"])
    # how much the most image-dependent class's score varies over the split: ~0 for a collapsed model
    metrics["score_std_max"] = float(preds["scores"].std(axis=0).max()) if len(preds["keys"]) > 1 else 0.0
    return metrics


COLLAPSED_SCORE_STD = 1e-3  # below this, every class's score is the same on every image, in effect
PLATEAU_EPOCHS, PLATEAU_CHANGE, PLATEAU_HIGH = 3, 1e-3, 0.9


def collapse(score_std_max: float, losses: list[float]) -> str | None:
    """Why the model looks collapsed, or None: every class scores (nearly) the same on every
    validation image, or the epoch loss stopped moving (each of the last PLATEAU_EPOCHS changes below
    PLATEAU_CHANGE, relative) at a high value (at least PLATEAU_HIGH of the first epoch's)."""
    if score_std_max < COLLAPSED_SCORE_STD:
        return (f"every class gets (nearly) the same score on every validation image (largest per-class "
                f"standard deviation {score_std_max:.1e})")  # fmt: skip
    recent = losses[-PLATEAU_EPOCHS - 1 :]
    if len(recent) == PLATEAU_EPOCHS + 1 and recent[-1] >= PLATEAU_HIGH * losses[0]:
        if all(abs(b - a) <= PLATEAU_CHANGE * abs(a) for a, b in zip(recent, recent[1:], strict=False)):
            return (f"the training loss has stopped moving at {recent[-1]:.4g} for {PLATEAU_EPOCHS} epochs "
                    f"(first epoch {losses[0]:.4g})")  # fmt: skip
    return None
