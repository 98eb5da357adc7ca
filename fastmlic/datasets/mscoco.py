"""MS-COCO 2014: annotations/instances_{train,val}2014.json with images in train2014/ and val2014/.

Classes in ascending category-id order (ASL, Query2Label, CoCo, SGRE; ML-GCN and MulCon use
alphabetical order instead). Images without any annotation are dropped and counted, as in every repo
but Query2Label; `iscrowd` objects count, as nobody filters them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..shards.format import make_key
from . import AnnotationError, Sample, SplitListing, require_file

SPLITS = ("train", "val")
NEEDS_ROOT = True


def list_split(root: Path, split: str) -> SplitListing:
    root = Path(root)
    ann_file = require_file(root / "annotations" / f"instances_{split}2014.json", "COCO annotation file")
    try:
        instances = json.loads(ann_file.read_text())
        categories = sorted(instances["categories"], key=lambda c: c["id"])
        images = instances["images"]
        annotations = instances["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AnnotationError(f"{ann_file}: not a COCO instances file ({e})") from None
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    labels: dict[int, set[int]] = {}
    for ann in annotations:
        if ann["category_id"] not in index_of:
            raise AnnotationError(
                f"{ann_file}: annotation {ann.get('id')} has unknown category {ann['category_id']}"
            )
        labels.setdefault(ann["image_id"], set()).add(index_of[ann["category_id"]])
    samples, unannotated = [], 0
    for image in sorted(images, key=lambda im: im["id"]):
        if image["id"] not in labels:
            unannotated += 1
            continue
        path = root / f"{split}2014" / image["file_name"]
        samples.append(
            Sample(make_key(Path(image["file_name"]).stem), path, tuple(sorted(labels[image["id"]])))
        )
    return SplitListing(
        [c["name"] for c in categories],
        samples,
        dropped={"no annotations": unannotated} if unannotated else {},
        conventions="classes in category-id order; images without annotations dropped",
    )
