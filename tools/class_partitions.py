#!/usr/bin/env python
"""Split a shard set's classes into K parts by their co-occurrence, for parallel self-distillation (the
`cpsd` recipe; its pipeline's `partition` stage does the same for a run).

    python tools/class_partitions.py --data mscoco --parts 5                  # CGP and DGP, seed 0
    python tools/class_partitions.py --data digits --parts 2 --mode cgp --seed 1
    python tools/class_partitions.py --data mscoco --parts 5 --mode cgp --published idx_coocurrence5_0.json

Reads the co-occurrence counts and positives of SHARDS/DATA/SPLIT.json (the training split) and
writes SHARDS/DATA/partition_MODE_kK_seedS.json: per part, its class names and indices, with the
mode, K and seed. `--published` imports a partition file published with the paper (a list of
{global index: local index} maps) instead; its indices follow the alphabetical order of the class
names (ML-GCN's category.json for COCO and NUS-WIDE), so they are mapped by name. How the parts are
cut: fastmlic/recipes/cpsd_partition.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastmlic.cli import exit_on_user_error
from fastmlic.errors import InputError
from fastmlic.recipes.cpsd_partition import MODES, import_published, partition_classes, write_partition
from fastmlic.shards.format import SplitInfo, split_json_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", required=True, help="shard set name (SHARDS/DATA/SPLIT.json)")
    p.add_argument("--shards", type=Path, default=Path("shards"), help="folder that holds the shard sets")
    p.add_argument("--split", default="train", help="split whose label statistics are cut (default: train)")
    p.add_argument("--parts", type=int, required=True, help="number of parts K")
    p.add_argument("--mode", choices=[*MODES, "both"], default="both", help="CGP, DGP or both (default)")
    p.add_argument("--seed", type=int, default=0, help="spectral clustering seed")
    p.add_argument("--published", type=Path, help="import this published partition file instead (one mode)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    info = SplitInfo.load(split_json_path(args.shards / args.data, args.split))
    modes = list(MODES) if args.mode == "both" else [args.mode]
    if args.published and len(modes) != 1:
        raise InputError("--published imports one file: give --mode cgp or --mode dgp with it")
    written = []
    for mode in modes:
        if args.published:
            groups = import_published(args.published, sorted(info.classes), info.classes)
            how = {"published": str(args.published)}
        else:
            groups = partition_classes(info.cooccurrence, info.positives, args.parts, mode, args.seed)
            how = {"seed": args.seed}
        path = args.shards / args.data / f"partition_{mode}_k{len(groups)}_seed{args.seed}.json"
        if args.published:
            path = path.with_name(f"partition_{mode}_k{len(groups)}_published.json")
        written.append(write_partition(path, info.classes, groups, mode=mode, k=len(groups),
                                       split=args.split, **how))  # fmt: skip
        print(f"{mode}: {len(groups)} parts of sizes {[len(g) for g in groups]} -> {path}")
        for k, g in enumerate(groups):
            names = [info.classes[i] for i in g]
            print(f"  part {k}: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    return written


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
