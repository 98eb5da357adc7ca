"""Visual Genome 500 with the SSGRL partition: ssgrl_partition/{train,test}_list_500.txt and
vg_category_500_labels_index.json ({"<image>.jpg": [class ids]}); images in VG_100K/ or VG_100K_2/.

The 500 classes have no published names, so they are "0".."499" (as in SSGRL and CoCo).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..shards.format import make_key
from . import AnnotationError, Sample, SplitListing, first_existing

SPLITS = ("train", "test")
NEEDS_ROOT = True
NUM_CLASSES = 500
IMAGE_DIRS = ("VG_100K", "VG_100K_2")


def list_split(root: Path, split: str) -> SplitListing:
    root = Path(root)
    part = root / "ssgrl_partition"
    list_file = first_existing([part / f"{split}_list_500.txt"], f"VG500 {split} list")
    label_file = first_existing(
        [part / "vg_category_500_labels_index.json", root / "vg_category_500_labels_index.json"],
        "vg_category_500_labels_index.json",
    )
    try:
        index = json.loads(label_file.read_text())
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{label_file}: not valid JSON ({e})") from None
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    unknown = [n for n in names if n not in index]
    if unknown:
        raise AnnotationError(
            f"{label_file}: no labels for {len(unknown)} images of {list_file} "
            f"(first: {', '.join(unknown[:5])})"
        )
    samples = []
    for name in names:
        ids = sorted(set(int(i) for i in index[name]))
        if ids and not (0 <= ids[0] and ids[-1] < NUM_CLASSES):
            raise AnnotationError(f"{label_file}: {name} has a class id outside 0..{NUM_CLASSES - 1}")
        # the image lives in one of two folders; the first that has it wins
        path = next(
            (root / d / name for d in IMAGE_DIRS if (root / d / name).is_file()), root / IMAGE_DIRS[0] / name
        )
        samples.append(Sample(make_key(Path(name).stem), path, tuple(ids)))
    return SplitListing(
        [str(i) for i in range(NUM_CLASSES)],
        samples,
        conventions="SSGRL partition; classes 0..499; image from VG_100K, else VG_100K_2",
    )
