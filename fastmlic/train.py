"""Train: `python fastmlic/train.py --cfg NAME.yaml [--section.key=value ...] [--resume RUN]`, or the
same under `torchrun --nproc_per_node N` for DDP (multi-node: add torchrun's --nnodes, --node_rank,
--rdzv_endpoint). Parse, build (fastmlic/trainer.py), fit, summary."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not fastmlic/*.py as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from fastmlic.cli import exit_on_user_error  # noqa: E402
from fastmlic.config import Config, add_help, load_config, print_help_if_asked  # noqa: E402
from fastmlic.errors import MissingInput  # noqa: E402

if TYPE_CHECKING:
    from fastmlic.distributed import Dist


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                add_help=False)  # fmt: skip
    p.add_argument("--cfg", help="config name (fastmlic/configs) or YAML path; default: digits")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue the run in this folder from its newest readable checkpoint")  # fmt: skip
    add_help(p)
    args, overrides = p.parse_known_args(argv)
    if args.resume:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise MissingInput(f"--resume {args.resume}: no config.yaml there")
        cfg = load_config(args.cfg or saved, overrides)
    else:
        cfg = load_config(args.cfg or "digits", overrides)
    print_help_if_asked(p, args, cfg, args.cfg or (saved if args.resume else "digits"))
    return cfg, args.resume


def main(argv: list[str] | None = None) -> dict:
    cfg, resume = parse_args(argv)
    # torch and everything built on it, after the arguments: `--help` answers without them
    from fastmlic.distributed import cleanup, init_distributed

    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    summary = train_run(cfg, dist, resume)
    cleanup(synchronize=True)
    return summary


def train_run(cfg: Config, dist: Dist, resume: Path | None = None) -> dict:
    """One run in an initialised process group (or one process): build, fit, summary, and free it all
    before the caller leaves the group or trains the next run."""
    from fastmlic.trainer import Trainer

    trainer = Trainer(cfg, dist, resume)
    summary = trainer.fit()
    trainer.print_summary(summary)
    trainer.run.close()
    # DDP keeps the process group and its last Gloo work (holding tensors) alive; freed by the garbage
    # collector at interpreter exit, or in the next run's collectives, they can abort the process, so
    # they go now
    del trainer
    gc.collect()
    if dist.device.type == "cuda":  # the next run (a pipeline's next stage) needs the memory
        import torch

        torch.cuda.empty_cache()
    return summary


if __name__ == "__main__":
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # set by torchrun for each rank
        # torchrun's failure report then shows the failed rank's exception, not only its exit code
        from torch.distributed.elastic.multiprocessing.errors import record

        sys.exit(record(exit_on_user_error)(main))
    sys.exit(exit_on_user_error(main))
