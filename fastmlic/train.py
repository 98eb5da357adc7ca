"""Train: `python fastmlic/train.py --cfg NAME.yaml [--section.key=value ...] [--resume RUN]`, or the
same under `torchrun --nproc_per_node N` for DDP (multi-node: add torchrun's --nnodes, --node_rank,
--rdzv_endpoint). Config -> DDP -> build -> loop; the loop's work lives in engine.py."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not fastmlic/*.py as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from fastmlic.cli import exit_on_user_error  # noqa: E402
from fastmlic.config import ConfigError, describe, load_config  # noqa: E402
from fastmlic.data import build_loader, split_json  # noqa: E402
from fastmlic.distributed import broadcast_object, cleanup, init_distributed  # noqa: E402
from fastmlic.engine import evaluate, train_one_epoch  # noqa: E402
from fastmlic.losses import build_loss  # noqa: E402
from fastmlic.methods import build_method  # noqa: E402
from fastmlic.models import build_model  # noqa: E402
from fastmlic.optim import build_optimizer, build_scheduler  # noqa: E402
from fastmlic.run import RunDir, load_checkpoint  # noqa: E402


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog="config keys (override with --section.key=value):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cfg", help="recipe name (fastmlic/configs) or YAML path; default: digits")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder from last.pt")
    args, overrides = p.parse_known_args(argv)
    if args.resume:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.yaml there")
        cfg = load_config(args.cfg or saved, overrides)
    else:
        cfg = load_config(args.cfg or "digits", overrides)
    return cfg, args.resume


def check_classes(expected: list[str], found: list[str], what: str) -> None:
    if expected != found:
        pairs = zip(expected, found, strict=False)
        diff = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(expected), len(found)))
        raise ValueError(
            f"{what}: {len(found)} classes, the shards have {len(expected)}; first difference at "
            f"index {diff}: {found[diff : diff + 1]} vs {expected[diff : diff + 1]}"
        )


def main(argv: list[str] | None = None) -> dict:
    cfg, resume = parse_args(argv)
    dist = init_distributed(cfg.train.device)
    t = cfg.train
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    amp = t.amp
    if amp == "fp16" and dist.device.type != "cuda":
        amp = "bf16"  # fp16 needs CUDA's loss scaling; bf16 has fp32's range and needs none

    run = RunDir(
        resume
        or Path(t.out_dir)
        / broadcast_object(
            t.name or RunDir.default_name(cfg.data.dataset, cfg.model.backbone), dist.world_size
        ),
        dist.is_main,
    )
    if resume:
        run.check_resume(cfg.to_dict())
    else:
        run.create(cfg.to_dict())
    if t.tensorboard:
        run.enable_tensorboard()

    where = dict(rank=dist.rank, world_size=dist.world_size, device=dist.device, seed=t.seed)
    train_loader = build_loader(split_json(cfg.data, cfg.data.train_split), cfg.data, train=True, **where)
    val_loader = build_loader(split_json(cfg.data, cfg.data.val_split), cfg.data, train=False, **where)
    classes = train_loader.info.classes
    check_classes(classes, val_loader.info.classes, f"split {cfg.data.val_split!r}")

    model = build_model(cfg.model, len(classes))
    if t.init_from:
        init = load_checkpoint(t.init_from)
        check_classes(classes, init["classes"], f"train.init_from {t.init_from}")
        model.load_state_dict(init["model"])
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(dist.device, memory_format=memory_format)
    if t.sync_bn and dist.world_size > 1:
        if dist.device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    method = build_method(t.method, build_loss(cfg.loss))
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = -(-len(train_loader) // cfg.optim.accumulate)
    scheduler = build_scheduler(optimizer, cfg.optim, t.epochs * steps_per_epoch, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    state = {"epoch": 0, "step": 0, "best": {"mAP": -1.0}, "best_raw": -1.0, "best_ema": -1.0}
    state["bad_epochs"] = 0
    if resume:
        ckpt = load_checkpoint(run.path / "last.pt")
        check_classes(classes, ckpt["classes"], f"--resume {run.path}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        method.load_state_dict(ckpt["method"])
        torch.set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        run.log(f"resumed {run.path} after epoch {state['epoch']} (step {state['step']})")

    net = torch.compile(model) if t.compile else model
    if dist.world_size > 1:
        device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=device_ids)
    run.log(
        f"run {run.path}: {len(classes)} classes, {train_loader.info.num_samples} train / "
        f"{val_loader.info.num_samples} {cfg.data.val_split} images, {train_loader.backend} data, "
        f"{dist.world_size} x {dist.device.type}, amp {amp}"
    )
    last_stats, epochs_run = None, 0
    for epoch in range(state["epoch"], t.epochs):
        train_loader.set_epoch(epoch)
        stats, state["step"] = train_one_epoch(
            net,
            method,
            optimizer,
            scheduler,
            scaler,
            ema,
            train_loader,
            device=dist.device,
            amp=amp,
            step=state["step"],
            accumulate=cfg.optim.accumulate,
            grad_clip=cfg.optim.grad_clip,
            sums_over_batch=method.criterion.sums_over_batch,
            world_size=dist.world_size,
            log_every=t.log_every,
            progress=dist.is_main,
            on_log=lambda row, e=epoch: run.record({"kind": "train", "epoch": e, **row}),
        )
        evals = {"raw": model}
        if ema is not None:
            evals["ema"] = ema.module
        metrics = {name: evaluate(m, val_loader, device=dist.device, amp=amp, world_size=dist.world_size,
                                  threshold=t.threshold, headline=t.map_flavour)
                   for name, m in evals.items()}  # fmt: skip
        best_name = max(metrics, key=lambda n: metrics[n]["mAP"])
        state["epoch"] = epoch + 1
        state["best_raw"] = max(state["best_raw"], metrics["raw"]["mAP"])
        state["best_ema"] = max(state["best_ema"], metrics.get("ema", {"mAP": -1.0})["mAP"])
        improved = metrics[best_name]["mAP"] > state["best"]["mAP"]
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        row = {"kind": "epoch", "epoch": epoch + 1, "step": state["step"], "loss": stats.loss,
               "lr": optimizer.param_groups[-1]["lr"], "images_per_s": stats.images_per_s,
               "images_per_s_per_device": stats.images_per_s / dist.world_size, "data_wait": stats.data_wait,
               "seconds": stats.seconds, "peak_memory_mb": peak_memory_mb(dist.device)}  # fmt: skip
        for name, m in metrics.items():
            row.update({f"{name}_{k}": v for k, v in m.items() if k != "ap"})
            row[f"{name}_ap"] = m["ap"]
        run.record(row)
        if improved:
            state["best"] = {"mAP": metrics[best_name]["mAP"], "source": best_name, "epoch": epoch + 1}
            run.save("best.pt", {
                "model": evals[best_name].state_dict(), "source": best_name, "epoch": epoch + 1,
                "metrics": metrics[best_name], "config": cfg.to_dict(), "classes": classes,
                "dataset": cfg.data.dataset,
            })  # fmt: skip
        run.save("last.pt", {
            "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "method": method.state_dict(),
            "rng": torch.get_rng_state(), "state": state, "config": cfg.to_dict(), "classes": classes,
        })  # fmt: skip
        run.log(
            f"epoch {epoch + 1}/{t.epochs}  loss {stats.loss:.4g}  mAP raw {metrics['raw']['mAP']:.4f}"
            + (f"  ema {metrics['ema']['mAP']:.4f}" if "ema" in metrics else "")
            + f"  {stats.images_per_s:.0f} img/s  data wait {stats.data_wait:.0%}"
        )
        last_stats, epochs_run = stats, epochs_run + 1
        if t.patience and state["bad_epochs"] >= t.patience:
            run.log(f"early stop: no better mAP for {t.patience} epochs")
            break
        if t.stop_after and epochs_run >= t.stop_after and epoch + 1 < t.epochs:
            run.log(
                f"stopping after {epochs_run} epochs as asked (train.stop_after); continue with "
                f"--resume {run.path}"
            )
            break
    summary = {"run": str(run.path), "best": state["best"], "best_raw_mAP": state["best_raw"],
               "best_ema_mAP": state["best_ema"], "epochs": state["epoch"],
               "images_per_s": last_stats.images_per_s if last_stats else None,
               "data_wait": last_stats.data_wait if last_stats else None,
               "peak_memory_mb": peak_memory_mb(dist.device),
               "skipped_images": len(train_loader.skipped) + len(val_loader.skipped)}  # fmt: skip
    print_summary(run, summary, dist)
    run.close()
    cleanup()
    return summary


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: process peak RSS


def print_summary(run: RunDir, s: dict, dist) -> None:
    best = s["best"]
    memory = "GPU memory (allocated)" if dist.device.type == "cuda" else "process RSS"
    lines = [
        "=" * 64,
        f"best mAP {best.get('mAP', float('nan')):.4f} ({best.get('source', '-')} weights, epoch "
        f"{best.get('epoch', '-')});  raw {s['best_raw_mAP']:.4f}  EMA {s['best_ema_mAP']:.4f}",
    ]
    if s["images_per_s"] is not None:
        lines.append(
            f"last epoch: {s['images_per_s']:.0f} images/s in total, "
            f"{s['images_per_s'] / dist.world_size:.0f} per device x {dist.world_size}; "
            f"data wait {s['data_wait']:.0%} of step time"
        )
    lines.append(f"peak {memory}: {s['peak_memory_mb']:.0f} MB (rank 0)")
    if s["skipped_images"]:
        lines.append(f"skipped undecodable images: {s['skipped_images']} (listed in log.txt warnings)")
    lines += [f"run folder: {run.path}  (best.pt, last.pt, metrics.jsonl, log.txt, config.yaml)",
              f"evaluate:   python -m fastmlic.evaluate --ckpt {run.path / 'best.pt'}",
              "=" * 64]  # fmt: skip
    run.log("\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
