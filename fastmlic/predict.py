"""Predict labels for image files: `python -m fastmlic.predict --ckpt RUN/best.pt IMAGE ... [--top-k 5 |
--threshold 0.5] [--json]`. Images are resized as in evaluation; unreadable files are reported and
skipped."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cli import exit_on_user_error
from .data.batch import normalize_uint8
from .engine import autocast
from .trainer import load_for_inference


def load_image(path: Path, size: int) -> torch.Tensor:
    """uint8 HWC at size x size (squash resize, as evaluation does)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(rgb))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--ckpt", required=True, help="checkpoint (RUN/best.pt)")
    p.add_argument("--top-k", type=int, help="report the k best labels of each image")
    p.add_argument("--threshold", type=float, help="report labels scoring at least this (default: the run's)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_for_inference(args.ckpt, [], device)
    cfg, classes = model.cfg, model.classes
    size = cfg.data.image_size
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    results = []
    for start in range(0, len(args.images), args.batch_size):
        paths, pixels = [], []
        for path in args.images[start : start + args.batch_size]:
            try:
                pixels.append(load_image(path, size))
                paths.append(path)
            except (OSError, ValueError) as e:
                print(f"{path}: skipped, not a readable image ({e})", file=sys.stderr)
        if not pixels:
            continue
        images = normalize_uint8(torch.stack(pixels).to(device), cfg.data.mean, cfg.data.std, torch.float32)
        with torch.no_grad(), autocast(device, model.amp):
            scores = torch.sigmoid(model.module.predict(images)["logits"].float()).cpu().numpy()
        for path, row in zip(paths, scores, strict=True):
            order = np.argsort(-row)
            chosen = order[: args.top_k] if args.top_k else [c for c in order if row[c] >= threshold]
            labels = [{"label": classes[c], "score": round(float(row[c]), 4)} for c in chosen]
            results.append({"image": str(path), "labels": labels})
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            labels = (
                ", ".join(f"{x['label']} {x['score']:.3f}" for x in r["labels"]) or "(none above threshold)"
            )
            print(f"{r['image']}: {labels}")
    return results


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
