#!/usr/bin/env python
"""Reading Open Images' label tables: a generated V6 layout with the real class counts (9,605 trainable of
19,957 described) and a human-verified label CSV of --rows rows, listed by the reader make_shards uses
(fastmlic/datasets/openimages.py). Each run is a fresh process, so its peak RSS is the listing's own; the
table is streamed into two uint16 arrays per image, and the figure to compare with is the CSV's size.

    python benchmarks/openimages_listing.py                 # 1 M rows (100 k images x 10 labels)
    python benchmarks/openimages_listing.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402

DESCRIBED, TRAINABLE, LABELS_PER_IMAGE = 19_957, 9_605, 10


def generate(root: Path, rows: int, seed: int = 0) -> None:
    """The class files and `rows` label rows: per image 3 positives, 6 verified negatives and one label of a
    described but non-trainable class, sorted by ImageID as the real files are."""
    rng = np.random.default_rng(seed)
    mids = [f"/m/{i:07x}" for i in range(DESCRIBED)]
    (root / "oidv6-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n" + "".join(f"{m},class {i}\n" for i, m in enumerate(mids)))  # fmt: skip
    (root / "oidv6-classes-trainable.txt").write_text("\n".join(mids[:TRAINABLE]) + "\n")
    images = rows // LABELS_PER_IMAGE
    with open(root / "oidv6-train-annotations-human-imagelabels.csv", "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        for image in range(images):
            classes = rng.choice(TRAINABLE, LABELS_PER_IMAGE - 1, replace=False)
            lines = [f"{image:016x},verification,{mids[c]},{int(k < 3)}\n" for k, c in enumerate(classes)]
            lines.append(f"{image:016x},verification,{mids[TRAINABLE + image % 100]},1\n")
            f.write("".join(lines))


def listing_run(root: Path) -> dict:
    """In this process (called in a child): list the split, report time and peak RSS."""
    from fastmlic.datasets import openimages

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    listing = openimages.list_split(root, "train")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "images": len(listing.samples), "peak_rss_bytes": peak,
            "rss_before_bytes": before, "dropped": listing.dropped}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="label rows in the generated CSV")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(listing_run(args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate(root, args.rows)
        print(f"generated {args.rows} rows in {time.perf_counter() - start:.1f} s")
        csv_bytes = (root / "oidv6-train-annotations-human-imagelabels.csv").stat().st_size
        done = subprocess.run([sys.executable, __file__, "--child", str(root)], check=True,
                              capture_output=True, text=True)  # fmt: skip
        run = json.loads(done.stdout.strip().splitlines()[-1])
    row = {
        "rows": args.rows,
        "images": run["images"],
        "csv_MB": round(csv_bytes / 1e6, 1),
        "seconds": round(run["seconds"], 2),
        "rows_per_s": round(args.rows / run["seconds"]),
        "peak_rss_MB": round(run["peak_rss_bytes"] / 2**20),
        "rss_after_imports_MB": round(run["rss_before_bytes"] / 2**20),
    }
    env = environment()
    print(markdown_table([row], list(row)))
    print(f"dropped: {run['dropped']}")
    print(f"written: {write_jsonl('openimages_listing', [row], env)}")


if __name__ == "__main__":
    main()
