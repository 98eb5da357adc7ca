"""What the PASCAL VOC devkits share (VOC2007, VOC2012): the 20 classes in the alphabetical order every
repository uses, the Annotations/{id}.xml format, and the two ways the field turns objects into labels:

- `difficult="ignore"` (the default; CoCo, SGRE, ML-GCN): a class is positive when one of its objects is
  not difficult; a class present only as difficult objects is written as "ignore" (left out of the loss
  and of AP);
- `difficult="positive"` (Puzzle-CAM's `read_xml`): every object counts, difficult or not.

With `drop_empty_boxes` an object whose box, clamped to the image as Puzzle-CAM clamps it, has zero
width or height is left out (Puzzle-CAM's `read_xml` does so).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ..errors import InputError
from . import AnnotationError, Sample, SplitListing, require_file

CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
DIFFICULT = ("ignore", "positive")


def devkit_dir(root: Path, year: str) -> Path:
    """Accept the VOCdevkit folder or the VOC<year> folder itself."""
    root = Path(root)
    return root if (root / "Annotations").is_dir() else root / f"VOC{year}"


def _coordinate(box: ET.Element, name: str, limit: int, xml_path: Path) -> int:
    text = (box.findtext(name) or "").strip()
    try:
        value = int(text.split(".")[0])  # devkit coordinates are 1-based ints, a few written as "273.5"
    except ValueError:
        raise AnnotationError(f"{xml_path}: bndbox {name} {text!r} is not a number") from None
    return max(min(value, limit - 1), 0)


def _is_empty(obj: ET.Element, size: ET.Element | None, xml_path: Path) -> bool:
    box = obj.find("bndbox")
    if box is None or size is None:
        raise AnnotationError(f"{xml_path}: an object without bndbox or an annotation without size; "
                              "zero-area boxes cannot be told apart")  # fmt: skip
    w, h = (int((size.findtext(k) or "0").strip() or 0) for k in ("width", "height"))
    x0, x1 = (_coordinate(box, k, w, xml_path) for k in ("xmin", "xmax"))
    y0, y1 = (_coordinate(box, k, h, xml_path) for k in ("ymin", "ymax"))
    return x1 == x0 or y1 == y0


def read_labels(xml_path: Path, difficult: str = "ignore", drop_empty_boxes: bool = False
                ) -> tuple[tuple[int, ...], tuple[int, ...], int]:  # fmt: skip
    """(positive class ids, ignored class ids, objects dropped for an empty box) of one annotation file."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as e:
        raise AnnotationError(f"{xml_path}: not valid XML ({e})") from None
    size = tree.getroot().find("size")
    easy, hard, dropped = set(), set(), 0
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in CLASSES:
            raise AnnotationError(f"{xml_path}: unknown class name '{name}'")
        if drop_empty_boxes and _is_empty(obj, size, xml_path):
            dropped += 1
            continue
        is_difficult = (obj.findtext("difficult") or "0").strip() == "1" and difficult == "ignore"
        (hard if is_difficult else easy).add(CLASSES.index(name))
    return tuple(sorted(easy)), tuple(sorted(hard - easy)), dropped


def read_ids(path: Path) -> list[str]:
    """Image ids, one per line (first column); CRLF line ends (Puzzle-CAM's train_aug.txt) are fine."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def list_ids(voc: Path, ids: list[str], ids_file: Path, difficult: str, drop_empty_boxes: bool
             ) -> SplitListing:  # fmt: skip
    """The listing of `ids` (read from `ids_file`, named in errors) under the devkit folder `voc`."""
    if difficult not in DIFFICULT:
        raise InputError(f"difficult={difficult!r}: use one of {', '.join(DIFFICULT)}")
    conventions = {
        "ignore": "positive if one instance is not difficult; difficult-only classes are written as ignore",
        "positive": "every object counts as positive, difficult or not (Puzzle-CAM)",
    }[difficult]
    missing = [i for i in ids if not (voc / "Annotations" / f"{i}.xml").is_file()]
    if missing:
        raise AnnotationError(
            f"{voc / 'Annotations'}: {len(missing)} annotation files listed in {ids_file} are missing "
            f"(first: {', '.join(m + '.xml' for m in missing[:5])})"
        )
    samples, empty_boxes = [], 0
    for image_id in ids:
        positives, ignored, dropped = read_labels(voc / "Annotations" / f"{image_id}.xml", difficult,
                                                  drop_empty_boxes)  # fmt: skip
        empty_boxes += dropped
        samples.append(Sample(image_id, voc / "JPEGImages" / f"{image_id}.jpg", positives, ignored))
    if drop_empty_boxes:
        conventions += f"; objects with a zero-area box left out ({empty_boxes} in this split)"
    return SplitListing(CLASSES, samples, has_ignore=difficult == "ignore", conventions=conventions)


def require_ids(path: Path, what: str) -> list[str]:
    return read_ids(require_file(path, what))
