"""What a dataset reader hands the shard writer: a split as a list of samples, each a key, its image (a
file or the encoded bytes) and its positive and ignored class ids, with the class names and what was
left out by convention."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    key: str
    image: Path | bytes  # the image file, or the encoded image itself (generated datasets)
    positives: tuple[int, ...]
    ignored: tuple[int, ...] = ()

    def read(self) -> bytes:
        return self.image if isinstance(self.image, bytes) else Path(self.image).read_bytes()


@dataclass
class SplitListing:
    classes: list[str]
    samples: list[Sample]
    has_ignore: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # samples left out by convention, by reason
    conventions: str = ""  # one line for SPLIT.json: how labels were derived
