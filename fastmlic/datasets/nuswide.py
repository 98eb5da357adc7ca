"""NUS-WIDE, 81 concepts: Concepts81.txt, ImageList/{Train,Test}Imagelist.txt,
Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt and images under Flickr/.

Classes in Concepts81.txt order. Line i of every label file belongs to line i of the image list. A
label counts as positive when `int(value) > 0`: one official file (Labels_lake_Train.txt) holds
-1130179 where a 0 belongs. Images with no positive label (about a fifth) are dropped and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..shards.format import make_key
from . import AnnotationError, Sample, SplitListing, first_existing

SPLITS = ("train", "test")
NEEDS_ROOT = True


def _concepts(root: Path) -> list[str]:
    path = first_existing(
        [root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt"], "Concepts81.txt"
    )
    concepts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(concepts) != 81:
        raise AnnotationError(f"{path}: expected 81 concepts, found {len(concepts)}")
    return concepts


def _label_column(path: Path, expected: int) -> np.ndarray:
    values = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(int(line.split()[0]) > 0)
        except ValueError:
            raise AnnotationError(
                f"{path}:{number}: expected an integer label, got {line.strip()!r}"
            ) from None
    if len(values) != expected:
        raise AnnotationError(f"{path}: {len(values)} labels for {expected} images in the image list")
    return np.array(values, dtype=bool)


def list_split(root: Path, split: str) -> SplitListing:
    root = Path(root)
    title = split.capitalize()
    list_file = first_existing(
        [
            root / "ImageList" / f"{title}Imagelist.txt",
            root / "ImageList" / "ImageList" / f"{title}Imagelist.txt",
        ],
        f"NUS-WIDE {split} image list",
    )
    paths = [line.strip().replace("\\", "/") for line in list_file.read_text().splitlines() if line.strip()]
    concepts = _concepts(root)
    label_files = [root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_{title}.txt" for c in concepts]
    absent = [str(p) for p in label_files if not p.is_file()]
    if absent:
        raise AnnotationError(f"{len(absent)} NUS-WIDE label files missing (first: {', '.join(absent[:3])})")
    labels = np.stack([_label_column(p, len(paths)) for p in label_files], axis=1)
    samples, unlabelled = [], 0
    for rel, row in zip(paths, labels, strict=True):
        if not row.any():
            unlabelled += 1
            continue
        key = make_key(str(Path(rel).with_suffix("")))
        samples.append(Sample(key, root / "Flickr" / rel, tuple(int(i) for i in np.flatnonzero(row))))
    return SplitListing(
        concepts,
        samples,
        dropped={"no label": unlabelled} if unlabelled else {},
        conventions="Concepts81 order; TrainTestLabels read with int(v) > 0; images with no label dropped",
    )
