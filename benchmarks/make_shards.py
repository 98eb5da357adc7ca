#!/usr/bin/env python
"""Shard-writing speed beside `tar -cf` of the same files, in one run.

A set of passthrough JPEGs (crops of the two photographs that ship with scikit-learn, resized to
VOC/COCO sizes, quality 90) is laid out as VG500 and written to shards by tools/make_shards.py;
`tar -cf` of the same image folder is the floor for "read files, write one archive". Both read from
a warm page cache. make_shards also decodes every image once to reject corrupt files, which tar
does not, so the ratio is what that check costs.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, percentiles, write_jsonl  # noqa: E402

SIZES = [(640, 480), (500, 375), (640, 427), (480, 640), (375, 500)]


def make_raw_set(root: Path, count: int, seed: int = 0) -> int:
    """A VG500-layout folder of `count` realistic JPEGs; returns their total size in bytes."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    (root / "VG_100K").mkdir(parents=True)
    (root / "ssgrl_partition").mkdir()
    names, total = [], 0
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = photo.crop((x, y, x + cw, y + ch)).resize(SIZES[i % len(SIZES)], Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        (root / "VG_100K" / f"{i}.jpg").write_bytes(buf.getvalue())
        names.append(f"{i}.jpg")
        total += len(buf.getvalue())
    (root / "ssgrl_partition" / "train_list_500.txt").write_text("\n".join(names) + "\n")
    (root / "ssgrl_partition" / "test_list_500.txt").write_text(names[0] + "\n")
    labels = {n: [int(c) for c in rng.choice(500, int(rng.integers(1, 6)), replace=False)] for n in names}
    (root / "ssgrl_partition" / "vg_category_500_labels_index.json").write_text(json.dumps(labels))
    return total


def time_runs(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="JPEGs in the set")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per provider (median reported)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="make_shards --workers values")
    p.add_argument("--quick", action="store_true", help="200 images, 2 repeats")
    args = p.parse_args()
    if args.quick:
        args.images, args.repeats = 200, 2
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_shards.py"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw_bytes = make_raw_set(tmp / "raw", args.images)
        for f in (tmp / "raw" / "VG_100K").iterdir():  # warm the page cache for both providers
            f.read_bytes()

        def run_tar():
            subprocess.run(
                ["tar", "-cf", str(tmp / "plain.tar"), "-C", str(tmp / "raw"), "VG_100K"], check=True
            )

        def run_shards(workers, check):
            def go():
                shutil.rmtree(tmp / "shards", ignore_errors=True)
                subprocess.run(
                    [
                        sys.executable,
                        str(tool),
                        "--data",
                        "vg500",
                        "--root",
                        str(tmp / "raw"),
                        "--out",
                        str(tmp / "shards"),
                        "--splits",
                        "train",
                        "--workers",
                        str(workers),
                        "--check",
                        check,
                    ],
                    check=True,
                    capture_output=True,
                )

            return go

        providers = {"tar -cf": run_tar}
        for check in ("decode", "structure"):
            providers.update(
                {f"make_shards --workers {w} --check {check}": run_shards(w, check) for w in args.workers}
            )
        rows = []
        for name, fn in providers.items():
            fn()  # warm-up
            stats = percentiles(time_runs(fn, args.repeats))
            seconds = stats["median_ms"] / 1e3
            rows.append(
                {
                    "provider": name,
                    "images": args.images,
                    "MB": raw_bytes / 1e6,
                    "images/s": args.images / seconds,
                    "MB/s": raw_bytes / 1e6 / seconds,
                    **stats,
                }
            )
    tar_rate = rows[0]["images/s"]
    for row in rows:
        row["ratio_to_tar"] = row["images/s"] / tar_rate
    env = environment()
    print(
        f"make_shards vs tar -cf on {args.images} passthrough JPEGs ({raw_bytes / 1e6:.0f} MB), "
        f"{env['device']}, {env['cpus']} CPUs; median of {args.repeats} after a warm-up "
        "(make_shards times include Python start-up)"
    )
    print(
        markdown_table(
            rows, ["provider", "images/s", "MB/s", "median_ms", "p20_ms", "p80_ms", "ratio_to_tar"]
        )
    )
    print(f"results: {write_jsonl('make_shards', [{'benchmark': 'make_shards', **r} for r in rows], env)}")


if __name__ == "__main__":
    main()
