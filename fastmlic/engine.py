"""train_one_epoch and evaluate: functions of built objects; nothing here reads a config file."""

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
from .metrics import multilabel_metrics

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message says at which step and what to try."""


def autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


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


def train_one_epoch(
    model: nn.Module,
    method,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler | None,
    ema,
    loader,
    *,
    device: torch.device,
    amp: str,
    step: int,
    accumulate: int = 1,
    grad_clip: float = 0.0,
    sums_over_batch: bool = False,
    world_size: int = 1,
    log_every: int = 20,
    on_log=None,
    progress: bool = False,
) -> tuple[EpochStats, int]:
    """One pass over `loader`; returns the epoch's statistics and the new optimizer step count.
    A loss that sums over the batch is scaled by the world size (DDP averages gradients) and summed
    over micro-batches; a mean loss is averaged over micro-batches: either way the step equals one
    process on the global batch."""
    model.train()
    backward_scale = world_size if sums_over_batch else 1.0 / accumulate
    report_scale = world_size if sums_over_batch else 1.0
    total_batches = len(loader)
    bar = tqdm(total=total_batches, disable=not progress, leave=False, dynamic_ncols=True, mininterval=1.0)
    losses, images, wait = [], 0, 0.0
    start = time.perf_counter()
    it = iter(loader)
    for i in range(total_batches):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        last_micro = (i + 1) % accumulate == 0 or i + 1 == total_batches
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, amp):
                loss, parts = method.training_step(model, batch)
            scaled = loss * backward_scale
            (scaler.scale(scaled) if scaler else scaled).backward()
        losses.append(loss.detach())
        images += len(batch)
        if last_micro:
            if scaler:
                scaler.unscale_(optimizer)
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if ema is not None:
                ema.update(model.module if hasattr(model, "module") else model, step=step)
            method.after_step(model, step)
            if step % log_every == 0:
                value = loss.item()  # one sync per log interval, not per step
                if not math.isfinite(value):
                    raise NonFiniteLoss(
                        f"loss is {value} at step {step}; try a lower optim.lr, optim.grad_clip, or "
                        "train.amp=bf16 instead of fp16. The last checkpoint before it is kept."
                    )
                if on_log:
                    on_log({"step": step, "loss": value, "lr": optimizer.param_groups[-1]["lr"],
                            **{f"loss_{k}": v.item() for k, v in parts.items()}})  # fmt: skip
        bar.update(1)
        if progress and i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    mean_loss = torch.stack(losses).float().mean().item() if losses else float("nan")
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(
            f"mean training loss is {mean_loss} in the epoch ending at step {step}; try a "
            "lower optim.lr, optim.grad_clip, or train.amp=bf16 instead of fp16."
        )
    # the loss of the global batch, as one process would report it: ranks' losses scaled as in backward
    images_all, wait_sum, loss_sum = all_reduce_sum([images, wait / seconds, mean_loss * report_scale],
                                                    world_size)  # fmt: skip
    stats = EpochStats(loss_sum / world_size, int(images_all), seconds, wait_sum / world_size, len(losses))
    return stats, step


@torch.no_grad()
def collect_predictions(model: nn.Module, loader, *, device: torch.device, amp: str, progress: bool = False,
                        return_attention: bool = False) -> dict:  # fmt: skip
    """This rank's sample keys with their sigmoid scores, targets and ignore mask (numpy)."""
    model.eval()
    keys, scores, targets, ignore, attention = [], [], [], [], []
    for batch in tqdm(loader, disable=not progress, leave=False, dynamic_ncols=True, mininterval=1.0):
        with autocast(device, amp):
            out = model(batch.images, return_attention=return_attention)
        keys += batch.keys
        scores.append(torch.sigmoid(out["logits"].float()).cpu().numpy())
        targets.append(batch.targets.cpu().numpy().astype(np.uint8))
        if batch.ignore is not None:
            ignore.append(batch.ignore.cpu().numpy())
        if return_attention and "attention" in out:
            attention.append(out["attention"].float().cpu().numpy())
    num_classes = loader.info.num_classes
    result = {
        "keys": keys,
        "scores": np.concatenate(scores) if scores else np.zeros((0, num_classes), np.float32),
        "targets": np.concatenate(targets) if targets else np.zeros((0, num_classes), np.uint8),
        "ignore": np.concatenate(ignore) if ignore else None,
    }
    if attention:
        result["attention"] = np.concatenate(attention)
    return result


def gather_predictions(local: dict, world_size: int) -> dict:
    """Every rank's predictions, matched by key and sorted by key; no sample counted twice."""
    parts = all_gather_objects({k: v for k, v in local.items() if k != "attention"}, world_size)
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
    return metrics
