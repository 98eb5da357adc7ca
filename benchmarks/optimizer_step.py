#!/usr/bin/env python
"""The optimiser's step alone, by implementation, side by side in one run: torch's per-tensor loop (its
default on the CPU), foreach (one call per operation over all tensors) and fused (one kernel per
step), over a preset's model and parameter groups (fastmlic/optim.py) with gradients in place. The
trainer takes the fused kernel where torch has one for the parameters' device (optim.fused_where_supported);
this is the figure behind that choice.

    python benchmarks/optimizer_step.py                                  # digits' resnet18, adam, adamw, sgd
    python benchmarks/optimizer_step.py --cfg coco_voc2007 --steps 5     # a ResNet-101 preset
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402
from fastmlic.config import load_config  # noqa: E402
from fastmlic.models import build_model  # noqa: E402
from fastmlic.optim import param_groups  # noqa: E402
from fastmlic.precision import cpu_name  # noqa: E402

OPTIMISERS = {
    "adam": lambda groups, o, kw: torch.optim.Adam(groups, lr=o.lr, **kw),
    "adamw": lambda groups, o, kw: torch.optim.AdamW(groups, lr=o.lr, **kw),
    "sgd": lambda groups, o, kw: torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                                 **kw),  # fmt: skip
}
IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_ms(make, steps: int) -> float:
    opt = make()
    for _ in range(3):  # the state is created in the first step
        opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="digits", help="the preset whose model and groups are stepped")
    p.add_argument("--optimisers", default=",".join(OPTIMISERS), help="comma-separated: adam, adamw, sgd")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row (median reported)")
    args, overrides = p.parse_known_args()
    cfg = load_config(args.cfg, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(cfg.data.classes) or 10)
    for q in model.parameters():
        q.grad = torch.randn_like(q)
    groups = param_groups(model, cfg.optim)
    n = sum(q.numel() for q in model.parameters())
    rows = []
    for name in args.optimisers.split(","):
        loop = None
        for impl, kw in IMPLEMENTATIONS.items():
            make = OPTIMISERS[name]
            ms = step_ms(lambda make=make, kw=kw: make([dict(g) for g in groups], cfg.optim, kw), args.steps)
            loop = loop or ms
            rows.append({"optimiser": name, "implementation": impl, "step_ms": ms, "vs_loop": loop / ms})
            print(f"  {name} {impl}: {ms:.1f} ms", file=sys.stderr, flush=True)
    env = environment()
    print(f"{args.cfg}: {cfg.model.backbone}, {n / 1e6:.1f} M parameters in {len(groups)} groups; "
          f"{cpu_name()}, {env['cpus']} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.steps} steps")  # fmt: skip
    print(markdown_table(rows, ["optimiser", "implementation", "step_ms", "vs_loop"]))
    print(f"results: {write_jsonl('optimizer_step', rows, env)}")


if __name__ == "__main__":
    main()
