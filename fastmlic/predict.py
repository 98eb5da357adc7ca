"""Predict labels for image files: `python -m fastmlic.predict --ckpt RUN/best.pt IMAGE|FOLDER ... [--top-k 5
| --threshold 0.5] [--json]`. A folder stands for the image files under it (by extension, recursively,
in name order). Images are resized as in evaluation. An unreadable file (or a folder without images)
gets a record with its error (in --json too) and the others are still predicted; the command then
exits 2."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .cli import exit_on_user_error, positive_int, probability
from .errors import InputError


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 HWC at size x size (squash resize, as evaluation does). A JPEG decodes at the smallest
    power-of-two reduction still at least `size` on each side, so a huge photo costs little memory, and
    PIL's warning about its pixel count (meant for code that decodes it whole) is not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.array(rgb)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand(inputs: list[Path]) -> list[Path]:
    """Files as given; a folder as the image files under it, in name order (none: the folder itself,
    which then gets an error record)."""
    out = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            out += found or [path]
        else:
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="image files, or folders of them")
    p.add_argument("--ckpt", required=True, help="checkpoint (RUN/best.pt; a run folder: its best.pt)")
    p.add_argument("--top-k", type=positive_int, help="report the k best labels of each image")
    p.add_argument("--threshold", type=probability,
                   help="report labels scoring at least this (default: the run's)")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image (`error` instead of `labels` if unreadable)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=32)
    args = p.parse_args(argv)
    # torch and everything built on it, after the arguments: `--help` answers without them
    import torch
    from tqdm import tqdm

    from .builder import load_for_inference
    from .data.batch import normalize_uint8
    from .precision import autocast

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_for_inference(args.ckpt, [], device)
    cfg, classes = model.cfg, model.classes
    size = cfg.data.image_size
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    inputs = expand(args.images)
    results = []
    bar = tqdm(total=len(inputs), unit="img", desc="predict", disable=None if len(inputs) > args.batch_size
               else True, file=sys.stderr)  # fmt: skip
    for start in range(0, len(inputs), args.batch_size):
        batch = inputs[start : start + args.batch_size]
        found, paths, pixels = {}, [], []
        for path in batch:
            if path.is_dir():
                kinds = ", ".join(IMAGE_SUFFIXES)
                found[path] = {"image": str(path), "error": f"a folder with no image files ({kinds})"}
                continue
            try:
                pixels.append(load_image(path, size))
                paths.append(path)
            except (OSError, ValueError) as e:
                found[path] = {"image": str(path), "error": f"not a readable image ({e})"}
        if pixels:
            uint8 = torch.from_numpy(np.stack(pixels)).to(device)
            images = normalize_uint8(uint8, cfg.data.mean, cfg.data.std, torch.float32)
            with torch.no_grad(), autocast(device, model.amp):
                scores = torch.sigmoid(model.module.predict(images)["logits"].float()).cpu().numpy()
            for path, row in zip(paths, scores, strict=True):
                order = np.argsort(-row)
                chosen = order[: args.top_k] if args.top_k else [c for c in order if row[c] >= threshold]
                labels = [{"label": classes[c], "score": round(float(row[c]), 4)} for c in chosen]
                found[path] = {"image": str(path), "labels": labels}
        results += [found[path] for path in batch]  # in the order given
        bar.update(len(batch))
    bar.close()
    for r in results:
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"{r['image']}: skipped, {r['error']}", file=sys.stderr)
        else:
            labels = (
                ", ".join(f"{x['label']} {x['score']:.3f}" for x in r["labels"]) or "(none above threshold)"
            )
            print(f"{r['image']}: {labels}")
    failed = [r["image"] for r in results if "error" in r]
    if failed:  # after printing what did work: a script must still see that something did not
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        raise InputError(f"{len(failed)} of {len(results)} inputs could not be read ({shown})")
    return results


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
