#!/usr/bin/env python
"""The baseline fastmlic's time to accuracy is measured against: a training script written the way the
ASL repository's train.py (Alibaba-MIIL/ASL) and the scripts built on it train, reading fastmlic's shards.

Plain webdataset + a PyTorch DataLoader with worker processes decoding with PIL, torchvision transforms
(squash resize, ToTensor, normalise), a timm model in fp32, the eager asymmetric loss, Adam with
weight decay on weights only and OneCycleLR stepped per batch, timm's EMA, and an evaluation of the raw
and the EMA model after every epoch. It takes its hyper-parameters from a fastmlic preset, so both
sides train the same thing; only the loop differs. It writes one JSON line per epoch (mAP, seconds).

    python benchmarks/asl_style.py --cfg digits --data.shards=shards --out asl.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import webdataset as wds
from PIL import Image
from timm.utils import ModelEmaV3
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastmlic.config import load_config  # noqa: E402  (the preset's settings, nothing of the trainer)
from fastmlic.metrics import average_precision  # noqa: E402  (the same mAP on both sides)


class AsymmetricLoss(nn.Module):
    """ASL's loss as its repository writes it (src/loss_functions/losses.py), eager."""

    def __init__(self, gamma_neg: float, gamma_pos: float, clip: float, eps: float = 1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xs_pos = torch.sigmoid(logits)
        xs_neg = 1 - xs_pos
        if self.clip > 0:
            xs_neg = (xs_neg + self.clip).clamp(max=1)
        loss = y * torch.log(xs_pos.clamp(min=self.eps)) + (1 - y) * torch.log(xs_neg.clamp(min=self.eps))
        pt = xs_pos * y + xs_neg * (1 - y)
        gamma = self.gamma_pos * y + self.gamma_neg * (1 - y)
        with torch.no_grad():  # ASL's disable_torch_grad_focal_loss
            weight = torch.pow(1 - pt, gamma)
        return -(loss * weight).sum()


def shard_urls(shards: Path, dataset: str, split: str) -> list[str]:
    listing = json.loads((shards / dataset / f"{split}.json").read_text())
    return [str(shards / dataset / s["tar"]) for s in listing["shards"]]


def loader(cfg, split: str, train: bool) -> wds.WebLoader:
    d = cfg.data
    tf = transforms.Compose([transforms.Resize((d.image_size, d.image_size)), transforms.ToTensor(),
                             transforms.Normalize(d.mean, d.std)])  # fmt: skip

    def sample(s):
        image = Image.open(io.BytesIO(s["jpg"])).convert("RGB")
        return tf(image), torch.from_numpy(np.frombuffer(s["lbl"], np.uint8).astype(np.float32))

    urls = shard_urls(Path(d.shards), d.dataset, split)
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if train else False, nodesplitter=wds.split_by_node,
                        empty_check=False)  # fmt: skip
    if train:
        ds = ds.shuffle(1000)
    ds = ds.map(sample).batched(d.batch_size, partial=not train)
    return wds.WebLoader(ds, batch_size=None, num_workers=d.workers, persistent_workers=d.workers > 0)


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> float:
    model.eval()
    scores, targets = [], []
    for images, y in batches:
        scores.append(torch.sigmoid(model(images)).numpy())
        targets.append(y.numpy())
    model.train()
    return float(np.nanmean(average_precision(np.concatenate(scores), np.concatenate(targets))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="digits", help="the fastmlic preset whose settings it trains with")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per epoch")
    args, overrides = p.parse_known_args()
    cfg = load_config(args.cfg, overrides)
    d, o, t = cfg.data, cfg.optim, cfg.train
    torch.manual_seed(t.seed)
    classes = json.loads((Path(d.shards) / d.dataset / f"{d.train_split}.json").read_text())["classes"]
    train_batches, val_batches = loader(cfg, d.train_split, True), loader(cfg, d.val_split, False)
    steps = -(-json.loads((Path(d.shards) / d.dataset / f"{d.train_split}.json").read_text())["num_samples"]
              // d.batch_size)  # fmt: skip
    model = timm.create_model(cfg.model.backbone, num_classes=len(classes))
    ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.Adam([{"params": decay, "weight_decay": o.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=o.lr)  # fmt: skip
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=t.epochs * steps,
                                                   pct_start=o.pct_start)  # fmt: skip
    criterion = AsymmetricLoss(cfg.loss.gamma_neg, cfg.loss.gamma_pos, cfg.loss.clip)
    start, step = time.perf_counter(), 0
    with args.out.open("w") as out:
        for epoch in range(1, t.epochs + 1):
            began, images_seen = time.perf_counter(), 0
            for images, y in train_batches:
                if step >= t.epochs * steps:
                    break  # OneCycleLR refuses a step past its total
                loss = criterion(model(images), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                ema.update(model, step=step)
                step, images_seen = step + 1, images_seen + len(images)
            seconds = time.perf_counter() - began
            raw, averaged = evaluate(model, val_batches), evaluate(ema.module, val_batches)
            row = {"epoch": epoch, "raw_mAP": raw, "ema_mAP": averaged, "seconds": seconds,
                   "images_per_s": images_seen / seconds,
                   "elapsed_s": time.perf_counter() - start}  # fmt: skip
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"epoch {epoch}/{t.epochs}  mAP raw {raw:.4f}  ema {averaged:.4f}  "
                  f"{images_seen / seconds:.0f} img/s  {seconds:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
