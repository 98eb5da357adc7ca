"""PASCAL VOC2007 from the devkit layout: VOC2007/{Annotations,ImageSets/Main,JPEGImages}.

Splits `trainval` and `test`. Classes in the alphabetical order every repo uses (`voc.py`). A class is
positive for an image when at least one of its objects is not difficult; a class present only as
difficult objects is written as "ignore" (the CoCo/SGRE convention: absent in training, excluded from
AP); `difficult="positive"` counts every object instead.
"""

from __future__ import annotations

from pathlib import Path

from . import SplitListing
from .voc import CLASSES, devkit_dir, list_ids, require_ids

__all__ = ["CLASSES", "NEEDS_ROOT", "SPLITS", "list_split"]

SPLITS = ("trainval", "test")
NEEDS_ROOT = True


def list_split(root: Path, split: str, difficult: str = "ignore") -> SplitListing:
    voc = devkit_dir(root, "2007")
    ids_file = voc / "ImageSets" / "Main" / f"{split}.txt"
    ids = require_ids(ids_file, f"VOC2007 image list for '{split}'")
    return list_ids(voc, ids, ids_file, difficult, drop_empty_boxes=False)
