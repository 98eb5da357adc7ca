"""A torchrun entry point for the tests: trains several runs one after another in one process group.

    torchrun --nproc_per_node=2 tests/train_several.py RUNS.json

RUNS.json is a list of argument lists as `fastmlic/train.py` takes them, each starting with
`--cfg NAME`. Each rank pays the start-up (torch, timm, the Gloo rendezvous) once instead of once a
run, which is most of a tiny run's time on a 2-core machine. The first run that fails ends them all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fastmlic.config import load_config
from fastmlic.distributed import cleanup, init_distributed
from fastmlic.train import train_run


def main() -> None:
    runs = json.loads(Path(sys.argv[1]).read_text())
    dist = None
    for args in runs:
        assert args[0] == "--cfg", args
        cfg = load_config(args[1], args[2:])
        dist = dist or init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
        train_run(cfg, dist)
    cleanup(synchronize=True)


if __name__ == "__main__":
    main()
