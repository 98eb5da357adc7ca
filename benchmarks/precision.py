#!/usr/bin/env python
"""The training step's speed by arithmetic, side by side in one run: fp32 and bf16 autocast, each with
contiguous and channels-last tensors, and torch.compile, per backbone. Each row is the trainer's own
step (`engine.train_one_epoch`: forward, loss, backward, optimizer, EMA) on one batch held in memory,
so the loader is out of the figure; median of --repeats runs of --steps steps after a warm-up. A
compiled row also reports the seconds its first steps took (the compilation). `train.amp: auto` and
`train.channels_last` are decided from these figures.

    python benchmarks/precision.py --data.shards=shards          # digits' resnet18 and the demo's resnet10t
    python benchmarks/precision.py --backbones resnet50 --data.image_size=160 --data.batch_size=16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402
from fastmlic.config import load_config  # noqa: E402
from fastmlic.distributed import init_distributed  # noqa: E402
from fastmlic.engine import train_one_epoch  # noqa: E402
from fastmlic.precision import cpu_bf16, cpu_name  # noqa: E402
from fastmlic.recipes.base import StepContext  # noqa: E402
from fastmlic.trainer import Trainer  # noqa: E402

ROWS = {
    "fp32": ["--train.amp=off", "--train.channels_last=false"],
    "fp32 + channels-last": ["--train.amp=off", "--train.channels_last=true"],
    "bf16": ["--train.amp=bf16", "--train.channels_last=false"],
    "bf16 + channels-last": ["--train.amp=bf16", "--train.channels_last=true"],
    "bf16 + channels-last + compile": ["--train.amp=bf16", "--train.channels_last=true",
                                       "--train.compile=true"],
}


def step_rate(cfg_name: str, overrides: list[str], steps: int, repeats: int) -> dict:
    cfg = load_config(cfg_name, [*overrides, "--data.backend=torch", "--data.workers=0"])
    cfg.train.out_dir = tempfile.mkdtemp(prefix="fastmlic-precision-")
    cfg.train.epochs = 1000  # the rows step far past one run's schedule: keep it going
    trainer = Trainer(cfg, init_distributed(cfg.train.device))
    batch = next(iter(trainer.train_loader))
    ctx = StepContext(step=0, epoch=0, total_steps=10**9, device=trainer.dist.device, amp=trainer.amp, rank=0,
                      world_size=1, ema=trainer.parts.ema)  # fmt: skip

    def run(n: int) -> float:
        return train_one_epoch(trainer.parts, [batch] * n, ctx, log_every=10**9).images_per_s

    start = time.perf_counter()
    run(3)  # warm-up; with compile: the compilation
    first = time.perf_counter() - start
    rates = sorted(run(steps) for _ in range(repeats))
    return {"images/s": rates[len(rates) // 2], "first_steps_s": first, "amp": trainer.amp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="digits", help="the preset of every row")
    p.add_argument("--backbones", default="resnet18,resnet10t", help="comma-separated timm backbones")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated among: {', '.join(ROWS)}")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    args, overrides = p.parse_known_args()
    rows = []
    for backbone in args.backbones.split(","):
        base = None
        for name in args.rows.split(","):
            r = step_rate(args.cfg, [*overrides, f"--model.backbone={backbone}", *ROWS[name]], args.steps,
                          args.repeats)  # fmt: skip
            base = base or r["images/s"]
            rows.append({"backbone": backbone, "row": name, **r, "vs_fp32": r["images/s"] / base})
            print(f"  {backbone} {name}: {r['images/s']:.1f} images/s", file=sys.stderr, flush=True)
    env = environment()
    cfg = load_config(args.cfg, overrides)
    print(f"{args.cfg}: {cfg.data.image_size} px, batch {cfg.data.batch_size}; {cpu_name()}, "
          f"{env['cpus']} CPUs, native bf16: {cpu_bf16() or 'no'}; median of {args.repeats} runs of "
          f"{args.steps} steps")  # fmt: skip
    print(markdown_table(rows, ["backbone", "row", "images/s", "vs_fp32", "first_steps_s"]))
    print(f"results: {write_jsonl('precision', rows, env)}")


if __name__ == "__main__":
    main()
