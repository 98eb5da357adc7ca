"""Evaluate a checkpoint: `python -m fastmlic.evaluate --ckpt RUN/best.pt [--split val] [--json]`.

Runs under torchrun as well (predictions are gathered across ranks by sample key). Prints mAP in both
flavours, CP/CR/CF1/OP/OR/OF1 at the threshold and for the top 3, and per-class AP.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .cli import exit_on_user_error
from .config import load_config
from .data import build_loader, split_json
from .distributed import cleanup, init_distributed
from .engine import collect_predictions, gather_predictions
from .metrics import multilabel_metrics
from .models import build_model
from .run import load_checkpoint


def config_from_checkpoint(ckpt: dict, overrides: list[str]):
    """The checkpoint's resolved config, with command-line overrides (e.g. --data.shards)."""
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:  # load_config reads recipes from files
        yaml.safe_dump(ckpt["config"], f)
        f.flush()
        return load_config(f.name, overrides)


def load_model(ckpt_path: str, overrides: list[str], device: torch.device):
    ckpt = load_checkpoint(ckpt_path)
    if "classes" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{ckpt_path}: not a fastmlic checkpoint (no classes/config)")
    cfg = config_from_checkpoint(ckpt, overrides)
    model = build_model(cfg.model, len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format).eval(), cfg, ckpt


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint (RUN/best.pt or RUN/last.pt)")
    p.add_argument("--split", help="split to evaluate (default: the run's data.val_split)")
    p.add_argument("--threshold", type=float, help="score threshold for CP/CR/... (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args, overrides = p.parse_known_args(argv)
    dist = init_distributed("auto")
    model, cfg, ckpt = load_model(args.ckpt, overrides, dist.device)
    split = args.split or cfg.data.val_split
    loader = build_loader(split_json(cfg.data, split), cfg.data, train=False, rank=dist.rank,
                          world_size=dist.world_size, device=dist.device)  # fmt: skip
    if loader.info.classes != ckpt["classes"]:
        raise ValueError(f"{args.ckpt} was trained on {len(ckpt['classes'])} classes; split {split!r} of "
                         f"{cfg.data.dataset} has {loader.info.num_classes} with other names")  # fmt: skip
    start = time.perf_counter()
    amp = cfg.train.amp if dist.device.type == "cuda" else ("bf16" if cfg.train.amp != "off" else "off")
    local = collect_predictions(model, loader, device=dist.device, amp=amp, progress=dist.is_main)
    preds = gather_predictions(local, dist.world_size)
    seconds = time.perf_counter() - start
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    m = multilabel_metrics(
        preds["scores"], preds["targets"], preds["ignore"], threshold, cfg.train.map_flavour
    )
    m.update(num_samples=len(preds["keys"]), split=split, weights=ckpt.get("source", "raw"))
    if dist.is_main:
        if args.json:
            print(json.dumps(m))
        else:
            print(report(m, ckpt["classes"], cfg.train.map_flavour, threshold, seconds))
    cleanup()
    return m


PRF = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def report(m: dict, classes: list[str], headline: str, threshold: float, seconds: float) -> str:
    lines = [f"{m['num_samples']} images of split {m['split']!r} in {seconds:.1f} s ({m['weights']} weights)",
             f"mAP {m['mAP']:.4f} ({headline}); non-interpolated {m['mAP_non_interpolated']:.4f}, "
             f"VOC2012 {m['mAP_voc2012']:.4f}",
             f"threshold {threshold}: " + "  ".join(f"{k} {m[k]:.4f}" for k in PRF),
             "top-3:        " + "  ".join(f"{k} {m[k + '@top3']:.4f}" for k in PRF),
             "per-class AP (worst first):"]  # fmt: skip
    ranked = sorted(range(len(classes)), key=lambda c: (m["ap"][c] != m["ap"][c], m["ap"][c]))
    lines += [f"  {classes[c]:<24} {m['ap'][c]:.4f}" for c in ranked[:20]]
    if len(classes) > 20:
        lines.append(f"  ... {len(classes) - 20} more")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
