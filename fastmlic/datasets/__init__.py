"""One reader per raw benchmark. Each lists a split as (key, image source, positive ids, ignored ids): a
`SplitListing` of `Sample`s (fastmlic/shards/listing.py, what the shard writer takes).

Listing reads only annotation files, so a missing or malformed annotation stops the run before any
image is touched; images are read later, in parallel, by the shard writer.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ..errors import InputError
from ..registry import Registry
from ..shards.listing import Sample, SplitListing

# Sample and SplitListing: what every reader here returns, re-exported for them
__all__ = ["DATASETS", "AnnotationError", "Sample", "SplitListing", "first_existing", "get_reader",
           "require_file"]  # fmt: skip


class AnnotationError(InputError):
    """A missing or malformed annotation file; the message names the file."""


# reader modules, registered by name; each has SPLITS, NEEDS_ROOT and list_split(root, split, **options)
DATASETS: Registry[str] = Registry("dataset", "--data")
for _name in ("voc2007", "voc2012", "mscoco", "nuswide", "vg500", "openimages", "digits"):
    DATASETS.register(_name)(f"fastmlic.datasets.{_name}")  # a module path: imported when first used


def get_reader(name: str) -> ModuleType:
    """The reader module registered as `name`."""
    return importlib.import_module(DATASETS.lookup(name))


def require_file(path: Path, what: str) -> Path:
    if not Path(path).is_file():
        raise AnnotationError(f"{path}: {what} not found")
    return Path(path)


def first_existing(candidates: list[Path], what: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise AnnotationError(f"{what} not found; looked for {', '.join(str(p) for p in candidates)}")
