"""digits: a learnable multi-label set composed offline from scikit-learn's 1,797 handwritten digits.

Each image holds 1 to 4 different digits in pale ink, scaled and placed at random on a noisy, dark,
tinted gradient; its labels are the digits present (10 classes). Digits come in partner pairs (0-6,
1-7, 2-5, 3-8, 4-9) that appear together far more often than chance, so co-occurrence methods have
structure to find. Train and validation images are composed from disjoint halves of the source
digits, and each image is a pure function of (seed, split, index), so the set is reproducible under
`--seed`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from . import Sample, SplitListing

SPLITS = ("train", "val")
NEEDS_ROOT = False
CLASSES = [str(d) for d in range(10)]
PARTNER = {0: 6, 6: 0, 1: 7, 7: 1, 2: 5, 5: 2, 3: 8, 8: 3, 4: 9, 9: 4}
DEFAULT_SIZES = {"train": 10_000, "val": 2_000}
DIGITS_PER_IMAGE = (1, 2, 3, 4)
DIGITS_PER_IMAGE_P = (0.3, 0.35, 0.2, 0.15)
PARTNER_P = 0.6  # chance that the next digit is the partner of one already placed


def _source_pools(seed: int) -> dict[str, dict[int, np.ndarray]]:
    """Split the 1,797 source digits into disjoint train / val pools, stratified by class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    pools: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == d))
        cut = len(idx) * 3 // 4
        pools["train"][d] = digits.images[idx[:cut]] / 16.0
        pools["val"][d] = digits.images[idx[cut:]] / 16.0
    return pools


def _pick_classes(rng: np.random.Generator) -> list[int]:
    k = int(rng.choice(DIGITS_PER_IMAGE, p=DIGITS_PER_IMAGE_P))
    chosen = [int(rng.integers(10))]
    while len(chosen) < k:
        partner = PARTNER[chosen[int(rng.integers(len(chosen)))]]
        if rng.random() < PARTNER_P and partner not in chosen:
            chosen.append(partner)
        else:
            chosen.append(int(rng.choice([d for d in range(10) if d not in chosen])))
    return chosen


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, tinted gradient with sensor-like noise."""
    c0, c1 = rng.uniform(0, 60, 3), rng.uniform(0, 60, 3)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    t = np.clip((x * np.cos(angle) + y * np.sin(angle) + 1) / 2, 0, 1)[..., None]
    return c0 * (1 - t) + c1 * t + rng.normal(0, 12, (size, size, 3))


def _ink(rng: np.random.Generator) -> np.ndarray:
    """A pale, slightly tinted ink: chalk on a dark board. Fully random ink and background colours
    made the set far slower to learn (about chance after 400 steps of a ResNet-18), too slow for a
    demo that must train on a laptop CPU in minutes."""
    return rng.uniform(190, 255, 3)


def _place(rng: np.random.Generator, size: int, side: int, boxes: list[tuple[int, int]]) -> tuple[int, int]:
    """Top-left corner for a `side` box that overlaps the earlier boxes as little as a few tries allow."""
    best, best_overlap = (0, 0), None
    for _ in range(30):
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        overlap = sum(max(0, side - abs(y - by)) * max(0, side - abs(x - bx)) for by, bx in boxes)
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = (y, x), overlap
        if overlap == 0:
            break
    return best


def compose(rng: np.random.Generator, pool: dict[int, np.ndarray], size: int) -> tuple[np.ndarray, list[int]]:
    """One RGB uint8 image and the digits it shows."""
    classes = _pick_classes(rng)
    canvas = _background(rng, size)
    boxes: list[tuple[int, int]] = []
    for d in classes:
        source = pool[d][int(rng.integers(len(pool[d])))]
        side = int(rng.uniform(0.3, 0.5) * size)
        alpha = np.asarray(
            Image.fromarray((source * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        )
        alpha = (alpha / 255.0)[..., None]
        y, x = _place(rng, size, side, boxes)
        boxes.append((y, x))
        region = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = region * (1 - alpha) + _ink(rng) * alpha
    return np.clip(canvas, 0, 255).astype(np.uint8), sorted(classes)


def list_split(
    root: Path | None, split: str, *, seed: int = 0, size: int = 96, num_samples: int | None = None
) -> SplitListing:
    pool = _source_pools(seed)[split]
    split_id = SPLITS.index(split)
    samples = []
    for i in range(num_samples if num_samples is not None else DEFAULT_SIZES[split]):
        rng = np.random.default_rng([seed, split_id, i])
        image, classes = compose(rng, pool, size)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        samples.append(Sample(f"{split}_{i:06d}", buf.getvalue(), tuple(classes)))
    return SplitListing(
        CLASSES,
        samples,
        conventions=f"sklearn digits at {size}px, 1-4 per image, seed {seed}, disjoint source digits",
    )
