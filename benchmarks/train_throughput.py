#!/usr/bin/env python
"""The full trainer's images/s beside its two ceilings, in one run, with the same step code:

- compute ceiling: the same model, loss and optimizer step on one batch held in memory (no loader);
- input ceiling:   the data pipeline alone, batches consumed and dropped;
- full trainer:    `engine.train_one_epoch` on the real loader.

The trainer should reach about 0.9x of min(compute, input): less means the loader and the step are
not overlapping.

    python benchmarks/train_throughput.py                                   # digits recipe, this machine
    python benchmarks/train_throughput.py --cfg vg500 --model.backbone=resnet101 --data.image_size=448
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402
from fastmlic.config import load_config  # noqa: E402
from fastmlic.distributed import init_distributed  # noqa: E402
from fastmlic.engine import train_one_epoch  # noqa: E402
from fastmlic.recipes.base import StepContext  # noqa: E402
from fastmlic.trainer import Trainer  # noqa: E402


class Limited:
    """The first `steps` batches of a loader (or one batch repeated), with the loader interface."""

    def __init__(self, source, steps: int, repeat=None):
        self.source, self.steps, self.repeat = source, steps, repeat
        self.info = source.info

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        if self.repeat is not None:
            return itertools.repeat(self.repeat, self.steps)
        return itertools.islice(iter(self.source), self.steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="digits", help="recipe (fastmlic/configs) or YAML path")
    p.add_argument("--steps", type=int, default=40, help="timed steps per row")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    args, overrides = p.parse_known_args()
    cfg = load_config(args.cfg, overrides)
    cfg.train.out_dir = tempfile.mkdtemp(prefix="fastmlic-bench-")  # the trainer's run folder, thrown away
    cfg.train.epochs = max(cfg.train.epochs, 1000)  # the rows step far past one run's schedule: keep it going
    trainer = Trainer(cfg, init_distributed(cfg.train.device))  # the trainer's own builder
    device, amp, loader = trainer.dist.device, trainer.amp, trainer.train_loader
    batch = next(iter(loader))

    def step_rate(source) -> float:
        ctx = StepContext(step=0, epoch=0, total_steps=10**9, device=device, amp=amp, rank=0, world_size=1,
                          ema=trainer.parts.ema)  # fmt: skip
        stats = train_one_epoch(trainer.parts, source, ctx, log_every=10**9)
        return stats.images_per_s, stats.data_wait

    def input_rate() -> tuple[float, float]:
        start, n = time.perf_counter(), 0
        for b in Limited(loader, args.steps):
            n += len(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start), 1.0

    providers = {
        "compute ceiling (one batch in memory)": lambda: step_rate(Limited(loader, args.steps, repeat=batch)),
        "input ceiling (loader alone)": input_rate,
        "full trainer": lambda: step_rate(Limited(loader, args.steps)),
    }
    rows = []
    for name, fn in providers.items():
        fn()  # warm-up: workers, allocator, DALI buffers
        runs = sorted(fn() for _ in range(args.repeats))
        rate, wait = runs[len(runs) // 2]
        rows.append({"provider": name, "images/s": rate, "data_wait": wait if "trainer" in name else None})
        print(f"  {name}: {rate:.1f} images/s", file=sys.stderr, flush=True)  # kept if a later row times out
    ceiling = min(rows[0]["images/s"], rows[1]["images/s"])
    for row in rows:
        row["ratio_to_min_ceiling"] = row["images/s"] / ceiling
    env = environment()
    print(f"{cfg.model.backbone} at {cfg.data.image_size} px, batch {cfg.data.batch_size}, amp {amp}, "
          f"{loader.backend} data with {cfg.data.workers} workers, {env['device']}, {env['cpus']} CPUs; "
          f"median of {args.repeats} runs of {args.steps} steps")  # fmt: skip
    print(markdown_table(rows, ["provider", "images/s", "ratio_to_min_ceiling", "data_wait"]))
    meta = {"benchmark": "train_throughput", "backbone": cfg.model.backbone, "amp": amp,
            "image_size": cfg.data.image_size, "batch_size": cfg.data.batch_size,
            "backend": loader.backend}  # fmt: skip
    print(f"results: {write_jsonl('train_throughput', [{**meta, **r} for r in rows], env)}")


if __name__ == "__main__":
    main()
