"""What a dataset reader hands the shard writer: a split as a list of samples, each a key, its image (a
file or the encoded bytes) and its positive and ignored class ids (or, for partially labelled sets, its
verified negatives), with the class names and what was left out by convention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .format import encode_multi_hot


@dataclass(frozen=True, slots=True)  # slots: millions of samples (Open Images) are held at once
class Sample:
    key: str
    image: Path | bytes  # the image file, or the encoded image itself (generated datasets)
    positives: Sequence[int]
    ignored: Sequence[int] = ()
    # verified negatives of a partially labelled set (Open Images): given, every class that is neither a
    # positive nor a negative is unknown and marked ignore; a list of the ~9,600 unknown ids per image
    # would not fit in memory for millions of images, its complement does
    negatives: Sequence[int] | None = None

    def read(self) -> bytes:
        return self.image if isinstance(self.image, bytes) else Path(self.image).read_bytes()

    def ignore_row(self, num_classes: int) -> np.ndarray:
        """uint8 [C], 1 = ignore this class for this image (unknown, or marked ignore by the reader)."""
        if self.negatives is None:
            return np.frombuffer(encode_multi_hot(self.ignored, num_classes), np.uint8)
        row = np.ones(num_classes, np.uint8)
        row[list(self.positives)] = 0
        row[list(self.negatives)] = 0
        return row


@dataclass
class SplitListing:
    classes: list[str]
    samples: list[Sample]
    has_ignore: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # samples left out by convention, by reason
    conventions: str = ""  # one line for SPLIT.json: how labels were derived
