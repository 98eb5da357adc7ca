"""PASCAL VOC2007 from the devkit layout: VOC2007/{Annotations,ImageSets/Main,JPEGImages}.

Splits `trainval` and `test`. Classes in the alphabetical order every repo uses. A class is positive
for an image when at least one of its objects is not difficult; a class present only as difficult
objects is written as "ignore" (the CoCo/SGRE convention: absent in training, excluded from AP).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from . import AnnotationError, Sample, SplitListing, require_file

SPLITS = ("trainval", "test")
NEEDS_ROOT = True
CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def _voc_dir(root: Path) -> Path:
    """Accept the VOCdevkit folder or the VOC2007 folder itself."""
    root = Path(root)
    return root if (root / "Annotations").is_dir() else root / "VOC2007"


def _labels(xml_path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as e:
        raise AnnotationError(f"{xml_path}: not valid XML ({e})") from None
    easy, difficult = set(), set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in CLASSES:
            raise AnnotationError(f"{xml_path}: unknown class name '{name}'")
        is_difficult = (obj.findtext("difficult") or "0").strip() == "1"
        (difficult if is_difficult else easy).add(CLASSES.index(name))
    return tuple(sorted(easy)), tuple(sorted(difficult - easy))


def list_split(root: Path, split: str) -> SplitListing:
    voc = _voc_dir(root)
    ids_file = require_file(voc / "ImageSets" / "Main" / f"{split}.txt", f"VOC2007 image list for '{split}'")
    ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
    missing = [i for i in ids if not (voc / "Annotations" / f"{i}.xml").is_file()]
    if missing:
        raise AnnotationError(
            f"{voc / 'Annotations'}: {len(missing)} annotation files listed in {ids_file} are missing "
            f"(first: {', '.join(m + '.xml' for m in missing[:5])})"
        )
    samples = []
    for image_id in ids:
        positives, ignored = _labels(voc / "Annotations" / f"{image_id}.xml")
        samples.append(Sample(image_id, voc / "JPEGImages" / f"{image_id}.jpg", positives, ignored))
    return SplitListing(
        CLASSES,
        samples,
        has_ignore=True,
        conventions="positive if one instance is not difficult; difficult-only classes are written as ignore",
    )
