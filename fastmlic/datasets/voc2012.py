"""PASCAL VOC2012 from the devkit layout: VOC2012/{Annotations,ImageSets/Main,JPEGImages}.

Splits `train` (5,717 images) and `val` (5,823) from ImageSets/Main; `seg_val` (1,449: the
segmentation val set, ImageSets/Segmentation/val.txt, disjoint from train_aug: what OASS and
Puzzle-CAM evaluate on; Main val shares about 4,500 images with train_aug, which make_shards' summary
reports); and `train_aug` (10,582: the segmentation training set augmented with SBD, as Puzzle-CAM
trains on) when its id list is found: `--train-aug-list FILE`, else ImageSets/Segmentation/train_aug.txt,
else ImageSets/Main/train_aug.txt (Puzzle-CAM's data/train_aug.txt can be copied there as it is; its
CRLF line ends are fine).

Labels as VOC2007 by default (a difficult-only class is "ignore"); `difficult="positive"` is
Puzzle-CAM's "every object counts". Objects whose box has zero width or height after clamping to
the image are left out, as Puzzle-CAM's `read_xml` does.
"""

from __future__ import annotations

from pathlib import Path

from . import AnnotationError, SplitListing
from .voc import CLASSES, devkit_dir, list_ids, require_ids

__all__ = ["CLASSES", "NEEDS_ROOT", "SPLITS", "default_splits", "find_train_aug_list", "list_split"]

SPLITS = ("train", "val", "train_aug", "seg_val")
NEEDS_ROOT = True


def _train_aug_places(voc: Path) -> tuple[Path, Path]:
    return voc / "ImageSets" / "Segmentation" / "train_aug.txt", voc / "ImageSets" / "Main" / "train_aug.txt"


def find_train_aug_list(root: Path, given: Path | None = None) -> Path | None:
    """The train_aug id list: `given`, or the first of the two devkit places that has one."""
    if given is not None:
        if not Path(given).is_file():
            raise AnnotationError(f"{given}: --train-aug-list file not found")
        return Path(given)
    return next((p for p in _train_aug_places(devkit_dir(root, "2012")) if p.is_file()), None)


def default_splits(root: Path, train_aug_list: Path | None = None) -> tuple[str, ...]:
    """The splits a plain `make_shards --data voc2012` writes: train_aug and seg_val only when their
    id lists are there."""
    extra = ("train_aug",) if find_train_aug_list(root, train_aug_list) is not None else ()
    if (devkit_dir(root, "2012") / "ImageSets" / "Segmentation" / "val.txt").is_file():
        extra += ("seg_val",)
    return ("train", "val", *extra)


def list_split(root: Path, split: str, difficult: str = "ignore", train_aug_list: Path | None = None
               ) -> SplitListing:  # fmt: skip
    voc = devkit_dir(root, "2012")
    if split == "train_aug":
        ids_file = find_train_aug_list(root, train_aug_list)
        if ids_file is None:
            raise AnnotationError(f"{_train_aug_places(voc)[0]}: the train_aug id list is not there (nor in "
                                  "ImageSets/Main): give --train-aug-list FILE")  # fmt: skip
    elif split == "seg_val":
        ids_file = voc / "ImageSets" / "Segmentation" / "val.txt"
    else:
        ids_file = voc / "ImageSets" / "Main" / f"{split}.txt"
    ids = require_ids(ids_file, f"VOC2012 image list for '{split}'")
    return list_ids(voc, ids, ids_file, difficult, drop_empty_boxes=True)
