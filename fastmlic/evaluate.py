"""Evaluate a checkpoint: `python -m fastmlic.evaluate --ckpt RUN/best.pt [--split val] [--json]`.

Runs under torchrun as well (predictions are gathered across ranks by sample key). Prints mAP in both
flavours, CP/CR/CF1/OP/OR/OF1 at the threshold and for the top 3, and per-class AP.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .cli import exit_on_user_error, probability
from .errors import MissingInput


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="RUN/best.pt, RUN/last.pt, or RUN (its best.pt)")
    p.add_argument("--split", help="split to evaluate (default: the run's data.val_split)")
    p.add_argument("--threshold", type=probability, help="score threshold for CP/CR/... (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args, overrides = p.parse_known_args(argv)
    # torch and everything built on it, after the arguments: `--help` answers without them
    from .builder import load_for_inference
    from .data import build_loader, split_json
    from .distributed import cleanup, init_distributed
    from .engine import collect_predictions, gather_predictions
    from .metrics import multilabel_metrics

    dist = init_distributed("auto")
    model = load_for_inference(args.ckpt, overrides, dist.device)
    cfg = model.cfg
    split = args.split or cfg.data.val_split
    # the checkpoint's classes, by name: a run over a class subset is evaluated on that subset
    try:
        loader = build_loader(split_json(cfg.data, split), cfg.data, train=False, rank=dist.rank,
                              world_size=dist.world_size, device=dist.device,
                              classes=model.classes)  # fmt: skip
    except FileNotFoundError as e:  # e.g. a mistyped --split: the message lists the splits there
        raise MissingInput(f"--split {split}: {e}") from None
    start = time.perf_counter()
    local = collect_predictions(model.module, loader, device=dist.device, amp=model.amp,
                                progress=dist.is_main)  # fmt: skip
    preds = gather_predictions(local, dist.world_size)
    seconds = time.perf_counter() - start
    threshold = cfg.train.threshold if args.threshold is None else args.threshold
    m = multilabel_metrics(
        preds["scores"], preds["targets"], preds["ignore"], threshold, cfg.train.map_flavour
    )
    # the class names say which AP is which, in JSON too
    m.update(num_samples=len(preds["keys"]), split=split, weights=model.checkpoint.source,
             classes=list(model.classes))  # fmt: skip
    if dist.is_main:
        if args.json:
            print(json.dumps(m))
        else:
            print(report(m, model.classes, cfg.train.map_flavour, threshold, seconds))
    cleanup(synchronize=True)
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
