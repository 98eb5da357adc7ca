#!/usr/bin/env python
"""Input-pipeline speed, side by side in one run on the same shards: JPEG decode alone, the DALI
pipeline and the PyTorch (DataLoader + torchvision v2) pipeline with the same augmentations.

Decode-only is the floor of CPU work per image: Pillow (libjpeg-turbo) decoding every image of the
split with as many threads as the pipelines get threads/workers. Each pipeline row is a full
training epoch through `fastmlic.data.build_loader` (decode, resize, flip, RandAugment, normalise,
Cutout), consumed on the device. Images/s is the median over several passes after a warm-up pass.

    python benchmarks/pipeline.py                          # 600 generated VOC/COCO-sized JPEGs, 448 px, CPU
    python benchmarks/pipeline.py --device gpu --images 4000
    python benchmarks/pipeline.py --split shards/voc2007/trainval.json
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, percentiles, write_jsonl  # noqa: E402
from benchmarks.make_shards import make_raw_set  # noqa: E402
from fastmlic.config import DataConfig  # noqa: E402
from fastmlic.data import build_loader  # noqa: E402
from fastmlic.data.dali_loader import dali_available  # noqa: E402
from fastmlic.data.index import ShardIndex  # noqa: E402
from fastmlic.shards.format import SplitInfo  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_shards.py"


def generated_split(tmp: Path, images: int, splits: tuple[str, ...] = ("train",), workers: int = 2) -> Path:
    """`images` VOC/COCO-sized JPEGs written as VG500-layout shards under `tmp`; their train.json.
    ("test" among `splits` adds VG500's one-image test split, for a trainer that needs one.)"""
    make_raw_set(tmp / "raw", images)
    command = [sys.executable, str(TOOL), "--data", "vg500", "--root", str(tmp / "raw"), "--out",
               str(tmp / "shards"), "--splits", *splits, "--workers", str(workers),
               "--shard-size", "128"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return tmp / "shards" / "vg500" / "train.json"


def decode_only(split: Path, threads: int):
    info = SplitInfo.load(split)
    index = ShardIndex(info, split.parent)
    blobs = [index.read(i, "jpg") for i in range(len(index))]  # read once: this row times decoding only

    def decode(data: bytes) -> int:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB").size[0]

    def run() -> int:
        with ThreadPoolExecutor(threads) as pool:
            return sum(1 for _ in pool.map(decode, blobs, chunksize=16))

    return run


def gpu_decode(split: Path, batch_size: int, image_size: int):
    """nvJPEG (the library DALI's "mixed" decoder uses) through torchvision: the split's JPEGs decoded in
    batches on the GPU, then each resized to the training side there; the bytes are read once first."""
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    info = SplitInfo.load(split)
    index = ShardIndex(info, split.parent)
    blobs = [torch.frombuffer(bytearray(index.read(i, "jpg")), dtype=torch.uint8) for i in range(len(index))]

    side = (image_size, image_size)

    def run() -> int:
        for start in range(0, len(blobs), batch_size):
            decoded = decode_jpeg(blobs[start : start + batch_size], mode=ImageReadMode.RGB, device="cuda")
            for image in decoded:
                F.interpolate(image[None].float(), size=side, mode="bilinear", antialias=True)
        torch.cuda.synchronize()
        return len(blobs)

    return run


def pipeline(split: Path, cfg: DataConfig, device: str):
    loader = build_loader(split, cfg, train=True, device=device)
    epoch = [0]

    def run() -> int:
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        seen = 0
        for batch in loader:
            seen += len(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        return seen

    return run


def measure(run, passes: int) -> tuple[float, dict]:
    run()  # warm-up: worker start, DALI buffers, page cache
    rates, times = [], []
    for _ in range(passes):
        start = time.perf_counter()
        n = run()
        times.append(time.perf_counter() - start)
        rates.append(n / times[-1])
    rates.sort()
    return rates[len(rates) // 2], percentiles(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", type=Path, help="SPLIT.json of existing shards (default: generate JPEGs)")
    p.add_argument("--images", type=int, default=600, help="generated JPEGs (500x375 to 640x480)")
    p.add_argument("--image-size", type=int, default=448, help="training image side")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers", type=int, default=2, help="DALI threads = DataLoader workers = decode threads"
    )
    p.add_argument("--passes", type=int, default=3, help="timed epochs per row (median reported)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--quick", action="store_true", help="160 images, 2 passes")
    args = p.parse_args()
    if args.quick:
        args.images, args.passes = 160, 2
    device = "cuda" if args.device == "gpu" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        split = args.split or generated_split(Path(tmp), args.images)
        num = SplitInfo.load(split).num_samples
        base = DataConfig(image_size=args.image_size, batch_size=args.batch_size, workers=args.workers)
        rows = []
        rate, stats = measure(decode_only(split, args.workers), args.passes)
        rows.append({"provider": f"Pillow decode only, {args.workers} threads", "images/s": rate, **stats})
        variants = {
            "RandAugment(2, 9) + flip + Cutout": base,
            "flip + Cutout, no RandAugment": dataclasses.replace(base, randaugment_n=0),
        }
        if device == "cuda":
            rate, stats = measure(gpu_decode(split, args.batch_size, args.image_size), args.passes)
            name = "nvJPEG decode + resize on the GPU (torchvision, batched)"
            rows.append({"provider": name, "images/s": rate, **stats})
        backends = ["dali", "torch"] if dali_available() else ["torch"]
        if not dali_available():
            rows.append({"provider": "dali: not installed here, not measured"})
        for label, cfg in variants.items():
            for backend in backends:
                cfg_b = dataclasses.replace(cfg, backend=backend)
                rate, stats = measure(pipeline(split, cfg_b, device), args.passes)
                rows.append({"provider": f"{backend}: {label}", "images/s": rate, **stats})
    floor = rows[0]["images/s"]
    for row in rows:
        if "images/s" in row:
            row["ratio_to_decode"] = row["images/s"] / floor
    for label in variants:
        dali = next((r for r in rows if r["provider"] == f"dali: {label}"), None)
        torch_row = next(r for r in rows if r["provider"] == f"torch: {label}")
        if dali:
            dali["dali_over_torch"] = dali["images/s"] / torch_row["images/s"]
    env = environment()
    print(
        f"input pipeline on {num} JPEGs at {args.image_size} px, batch {args.batch_size}, {env['device']}, "
        f"{env['cpus']} CPUs; median of {args.passes} epochs after a warm-up"
    )
    print(markdown_table(rows, ["provider", "images/s", "ratio_to_decode", "dali_over_torch", "median_ms"]))
    meta = {"benchmark": "pipeline", "images": num, "image_size": args.image_size, "workers": args.workers}
    print(f"results: {write_jsonl('pipeline', [{**meta, **r} for r in rows], env)}")


if __name__ == "__main__":
    main()
