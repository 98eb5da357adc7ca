"""Open Images V6, image-level labels, as its download page names the files (in --root, or in its
annotations/ or metadata/ folder):

    oidv6-class-descriptions.csv                   LabelName,DisplayName (MID -> readable name)
    oidv6-classes-trainable.txt                    the 9,605 trainable MIDs, one per line
    oidv6-train-annotations-human-imagelabels.csv  ImageID,Source,LabelName,Confidence (human-verified)
    validation-annotations-human-imagelabels.csv   (same columns)
    test-annotations-human-imagelabels.csv         (same columns)
    <split>-annotations-machine-imagelabels.csv    machine labels: read only with --machine-labels CONF
    train/ validation/ test/                       ImageID.jpg; training images may sit in sub-folders
                                                   (train/train_0/...) or in train_0/ ... train_f/ beside

Classes: the trainable list, in its order, named by their display name (a name two MIDs share gets
its MID appended). A human label with Confidence 1 is a positive, with 0 a verified negative; every
other class of the image is unknown, written to `.ign`: the metrics leave it out, as the dataset's
protocol counts only verified labels, and `loss.use_ignore` says whether training does (true) or
counts it negative (false, as ASL trains Open Images). Labels of classes outside the trainable list
are dropped and counted; images without a trainable verified label are dropped and counted.

The label files are hundreds of MB: they are streamed row by row into two small integer arrays per
image (positives, negatives), the only copy of the table that is held.
"""

from __future__ import annotations

import csv
import os
from array import array
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from . import AnnotationError, Sample, SplitListing, first_existing

SPLITS = ("train", "validation", "test")
NEEDS_ROOT = True
COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")
_LABEL_FILES = {
    "train": ("oidv6-train-annotations-human-imagelabels.csv", "train-annotations-human-imagelabels.csv"),
    "validation": ("validation-annotations-human-imagelabels.csv",),
    "test": ("test-annotations-human-imagelabels.csv",),
}
_SUBFOLDERS = ("", "annotations", "metadata")


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    return first_existing([root / sub / name for name in names for sub in _SUBFOLDERS], what)


def read_classes(root: Path) -> tuple[list[str], list[str], set[str]]:
    """(MIDs, display names) of the trainable classes, in the trainable list's order, and every MID the
    descriptions know."""
    descriptions = _find(root, ("oidv6-class-descriptions.csv", "class-descriptions.csv"),
                         "Open Images class descriptions (oidv6-class-descriptions.csv)")  # fmt: skip
    trainable = _find(root, ("oidv6-classes-trainable.txt", "classes-trainable.txt"),
                      "Open Images trainable class list (oidv6-classes-trainable.txt)")  # fmt: skip
    names: dict[str, str] = {}
    with open(descriptions, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if number == 1 and row[:1] == ["LabelName"]:
                continue  # V6 has a header row, V5 had none
            if len(row) < 2 or not row[0].startswith("/"):
                raise AnnotationError(f"{descriptions}:{number}: expected 'MID,DisplayName', got {row!r}")
            names[row[0]] = row[1]
    mids = []
    for number, line in enumerate(trainable.read_text(encoding="utf-8").splitlines(), 1):
        mid = line.strip()
        if not mid or (number == 1 and not mid.startswith("/")):  # a header line, where there is one
            continue
        if mid not in names:
            raise AnnotationError(f"{trainable}:{number}: class {mid} is not in {descriptions.name}")
        mids.append(mid)
    if len(set(mids)) != len(mids):
        raise AnnotationError(f"{trainable}: lists a class more than once")
    shown = [names[m] for m in mids]
    counts = Counter(shown)
    unique = [f"{n} ({m})" if counts[n] > 1 else n for n, m in zip(shown, mids, strict=True)]
    return mids, unique, set(names)


def _rows(path: Path, desc: str):
    """(line number, ImageID, LabelName, Confidence) of a label CSV, streamed with a progress bar."""
    with open(path, newline="", encoding="utf-8") as f, tqdm(
        total=os.path.getsize(path), unit="B", unit_scale=True, desc=desc, disable=None, leave=False
    ) as bar:
        lines = _counted(f, bar)
        reader = csv.reader(lines)
        header = next(reader, [])
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise AnnotationError(f"{path}: no column {', '.join(missing)} in its header {header!r} "
                                  f"(expected {','.join(COLUMNS)})")  # fmt: skip
        at = [header.index(c) for c in ("ImageID", "LabelName", "Confidence")]
        width = len(header)
        for number, row in enumerate(reader, 2):
            if len(row) != width:
                raise AnnotationError(f"{path}:{number}: {len(row)} fields, the header has {width}")
            yield number, row[at[0]], row[at[1]], row[at[2]]


def _counted(f, bar):
    for line in f:
        bar.update(len(line))
        yield line


class _Labels:
    """Per image: positive and verified negative class ids, as uint16 arrays."""

    def __init__(self, mids: list[str], known: set[str]):
        self.column = {m: i for i, m in enumerate(mids)}
        self.known = known  # every MID in the descriptions: anything else is a typo or another version
        self.images: dict[str, tuple[array, array]] = {}
        self.untrainable = 0

    def read_human(self, path: Path) -> None:
        for number, image, mid, confidence in _rows(path, path.name):
            column = self._column(path, number, mid)
            if column is None:  # the image still counts: dropped as unlabelled if nothing else is left
                self._entry(image)
                self.untrainable += 1
                continue
            if confidence in ("1", "1.0"):
                self._entry(image)[0].append(column)
            elif confidence in ("0", "0.0"):
                self._entry(image)[1].append(column)
            else:
                raise AnnotationError(f"{path}:{number}: human-verified Confidence {confidence!r}, "
                                      f"expected 0 or 1")  # fmt: skip

    def read_machine(self, path: Path, threshold: float) -> None:
        """Machine labels at or above `threshold` become positives where no human verified the class."""
        for number, image, mid, confidence in _rows(path, path.name):
            column = self._column(path, number, mid)
            if column is None:
                continue
            try:
                score = float(confidence)
            except ValueError:
                raise AnnotationError(f"{path}:{number}: Confidence {confidence!r} is not a number") from None
            if score >= threshold:
                positives, negatives = self._entry(image)
                if column not in positives and column not in negatives:
                    positives.append(column)

    def _column(self, path: Path, number: int, mid: str) -> int | None:
        column = self.column.get(mid)
        if column is None:
            if mid not in self.known:
                raise AnnotationError(f"{path}:{number}: unknown class id {mid!r} (not in the class "
                                      f"descriptions: a file of another Open Images version?)")  # fmt: skip
        return column

    def _entry(self, image: str) -> tuple[array, array]:
        entry = self.images.get(image)
        if entry is None:
            entry = self.images[image] = (array("H"), array("H"))
        return entry


def _image_folders(root: Path, split: str) -> list[Path]:
    folders = [root / split, root / "images" / split]
    if split == "train":  # the CVDF archives unpack to train_0/ ... train_f/
        folders += sorted(p for p in root.glob("train_[0-9a-f]") if p.is_dir())
    return [p for p in folders if p.is_dir()]


def _image_paths(root: Path, split: str, wanted: set[str]) -> dict[str, Path]:
    """ImageID -> its file, found by one walk of the split's folders (sub-folders included)."""
    found: dict[str, Path] = {}
    for folder in _image_folders(root, split):
        for dirpath, _, files in os.walk(folder):
            here = Path(dirpath)
            for name in files:
                stem, ext = os.path.splitext(name)
                if ext.lower() == ".jpg" and stem in wanted and stem not in found:
                    found[stem] = here / name
    return found


def list_split(root: Path, split: str, machine_labels: float | None = None) -> SplitListing:
    root = Path(root)
    mids, names, known = read_classes(root)
    labels = _Labels(mids, known)
    labels.read_human(_find(root, _LABEL_FILES[split], f"Open Images {split} human-verified image labels"))
    if machine_labels is not None:
        machine_file = _find(root, (f"{split}-annotations-machine-imagelabels.csv",),
                             f"Open Images {split} machine labels (--machine-labels)")  # fmt: skip
        labels.read_machine(machine_file, machine_labels)
    paths = _image_paths(root, split, set(labels.images))
    samples, unlabelled = [], 0
    for image in sorted(labels.images):
        positives, negatives = labels.images.pop(image)  # popped: the table is never held twice
        if not positives and not negatives:
            unlabelled += 1
            continue
        pos = sorted(set(positives))
        neg = sorted(set(negatives) - set(pos))  # a class both verified and refuted counts positive
        path = paths.get(image, root / split / f"{image}.jpg")  # absent: make_shards names it
        # uint16 arrays, not tuples of int objects: a third of the listing's memory per image
        samples.append(Sample(image, path, array("H", pos), negatives=array("H", neg)))
    dropped = {}
    if labels.untrainable:
        dropped["labels of non-trainable classes"] = labels.untrainable
    if unlabelled:
        dropped["no trainable verified label"] = unlabelled
    machine = "" if machine_labels is None else f"; machine labels >= {machine_labels} if no human verified"
    return SplitListing(
        names,
        samples,
        has_ignore=True,
        dropped=dropped,
        conventions="trainable classes in list order; human Confidence 1 positive, 0 negative, other classes "
        f"unknown (.ign){machine}",
    )
