#!/usr/bin/env python
"""Where DALI's CPU RandAugment spends its time, operation by operation, beside torchvision's.

For DALI: a CPU pipeline decodes and resizes the same JPEGs (held in memory) to the training side, then
applies one operation of DALI's RandAugment suite to every image at magnitude m. The cost of the
operation per image is that pipeline's time less the time of the same pipeline without it. Further
rows time DALI's whole `rand_augment(n, m)`, and the same selection machinery with every operation
replaced by the identity, which is the cost of the conditional split and merge alone. For torchvision:
the same operations of `v2.RandAugment` on the same resized uint8 images, one image at a time. DALI's
geometric operations run twice: with its default linear interpolation and with nearest-neighbour, as
torchvision's RandAugment (and fastmlic's DALI pipeline) samples. Both sides run single-threaded, so
the figures are CPU milliseconds per image.

    python benchmarks/dali_randaugment.py                # 200 generated photos-sized JPEGs, 448 px
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402
from benchmarks.pipeline import generated_split  # noqa: E402
from fastmlic.data.index import ShardIndex  # noqa: E402
from fastmlic.precision import cpu_name  # noqa: E402
from fastmlic.shards.format import SplitInfo  # noqa: E402

# DALI's suite name -> torchvision v2.RandAugment's name for the same operation
TORCHVISION_NAMES = {
    "shear_x": "ShearX", "shear_y": "ShearY", "translate_x": "TranslateX", "translate_y": "TranslateY",
    "rotate": "Rotate", "brightness": "Brightness", "contrast": "Contrast", "color": "Color",
    "sharpness": "Sharpness", "posterize": "Posterize", "solarize": "Solarize", "equalize": "Equalize",
    "auto_contrast": "AutoContrast", "identity": "Identity",
}  # fmt: skip


def dali_rate(blobs: list[np.ndarray], size: int, batch: int, passes: int, augment=None) -> float:
    """Images/s of decode + resize (+ `augment(images)`) in a one-thread CPU DALI pipeline."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(enable_conditionals=True)
    def graph():
        jpegs = fn.external_source(source=lambda info: blobs[info.idx_in_epoch % len(blobs)], batch=False)
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
        return augment(images) if augment else images

    pipe = graph(batch_size=batch, num_threads=1, device_id=None, seed=0, prefetch_queue_depth=1)
    pipe.build()
    steps = -(-len(blobs) // batch)
    for _ in range(steps):  # warm-up: buffers sized
        pipe.run()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for _ in range(steps):
            pipe.run()
        times.append(time.perf_counter() - start)
    return steps * batch / sorted(times)[len(times) // 2]


def torchvision_ms(images: list[torch.Tensor], op: str, m: int, bins: int, passes: int) -> float:
    """Milliseconds per image of one torchvision RandAugment operation at magnitude bin m."""
    from torchvision.transforms import v2

    ra = v2.RandAugment(num_ops=1, magnitude=m, num_magnitude_bins=bins)
    magnitudes = ra._AUGMENTATION_SPACE[op][0](bins, *images[0].shape[-2:])  # as v2.RandAugment.forward
    magnitude = 0.0 if magnitudes is None else float(magnitudes[m])
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for image in images:
            ra._apply_image_or_video_transform(image, op, magnitude, ra.interpolation, ra._fill)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2] / len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="generated JPEGs (500x375 to 640x480)")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--n", type=int, default=2, help="RandAugment's operations per image")
    p.add_argument("--m", type=int, default=9, help="RandAugment's magnitude bin (of 31)")
    p.add_argument("--passes", type=int, default=3, help="timed passes per row (median reported)")
    args = p.parse_args()
    from nvidia.dali import types
    from nvidia.dali.auto_aug import augmentations, rand_augment
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    torch.set_num_threads(1)
    bins, size = 31, args.image_size
    with tempfile.TemporaryDirectory() as tmp:
        split = generated_split(Path(tmp), args.images)
        index = ShardIndex(SplitInfo.load(split), split.parent)
        raw = [index.read(i, "jpg") for i in range(len(index))]
    blobs = [np.frombuffer(b, np.uint8) for b in raw]
    resized = [v2.functional.resize(decode_jpeg(torch.from_numpy(b.copy())), [size, size], antialias=True)
               for b in blobs]  # fmt: skip
    run = {"blobs": blobs, "size": size, "batch": 32, "passes": args.passes}
    base = dali_rate(**run)
    suite = rand_augment.get_rand_augment_suite(use_shape=True)
    interps = {"linear": types.INTERP_LINEAR, "nearest": types.INTERP_NN}

    def ms(augment) -> float:
        """The milliseconds per image `augment` adds to decode + resize."""
        return 1000 / dali_rate(**run, augment=augment) - 1000 / base

    def one(aug, interp):
        accepted = inspect.signature(aug.op).parameters
        own = {k: v for k, v in {"shape": [size, size], "interp_type": interp}.items() if k in accepted}
        return lambda x: rand_augment.apply_rand_augment([aug], x, n=1, m=args.m, num_magnitude_bins=bins,
                                                         **own)  # fmt: skip

    rows = []
    for aug in suite:
        tv = torchvision_ms(resized, TORCHVISION_NAMES[aug.name], args.m, bins, args.passes)
        row = {"operation": aug.name, **{f"dali_{k}_ms": ms(one(aug, v)) for k, v in interps.items()},
               "torchvision_ms": tv}  # fmt: skip
        rows.append(row)
        print("  " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else v for k, v in row.items()),
              file=sys.stderr)  # fmt: skip
    whole = {f"dali_{k}_ms": ms(lambda x, v=v: rand_augment.rand_augment(
        x, n=args.n, m=args.m, num_magnitude_bins=bins, shape=[size, size], interp_type=v))
        for k, v in interps.items()}  # fmt: skip
    identities = [augmentations.identity] * len(suite)  # the same selection, nothing applied
    selection = ms(lambda x: rand_augment.apply_rand_augment(identities, x, n=args.n, m=args.m,
                                                             num_magnitude_bins=bins))  # fmt: skip
    columns = ["dali_linear_ms", "dali_nearest_ms", "torchvision_ms"]
    mean = {c: args.n * float(np.mean([r[c] for r in rows])) for c in columns}
    rows += [
        {"operation": f"rand_augment(n={args.n}, m={args.m}), whole", **whole},
        {"operation": f"its selection alone ({len(suite)} identities)", "dali_linear_ms": selection,
         "dali_nearest_ms": selection},
        {"operation": f"{args.n} x the mean operation", **mean},
    ]  # fmt: skip
    env = environment()
    print(f"\n{len(blobs)} JPEGs at {size} px, one thread each side; {cpu_name()}; decode + resize alone: "
          f"{1000 / base:.2f} ms per image in DALI; ms per image added by each operation")  # fmt: skip
    print(markdown_table(rows, ["operation", *columns]))
    print(f"results: {write_jsonl('dali_randaugment', rows, env)}")

if __name__ == "__main__":
    main()
