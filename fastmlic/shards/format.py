"""The shard format, read by the data pipeline, the trainer and outside tools.

    shards/NAME/SPLIT-000000.tar   members KEY.jpg (JPEG bytes), KEY.lbl (C bytes, uint8 multi-hot, 1 =
                                   positive) and, for datasets with an ignore mask, KEY.ign (C bytes, 1 =
                                   ignore this class for this image in evaluation)
    shards/NAME/SPLIT-000000.idx   DALI webdataset index (v1.2), so DALI never scans a tar
    shards/NAME/SPLIT.json         class names, sample and shard counts, label statistics, provenance

Keys contain only [A-Za-z0-9_-]: DALI takes everything after the first dot of a member name as its
extension, and webdataset splits keys the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingInput
from .storage import is_url, join, split_location

FORMAT = "fastmlic-shards/1"
IMAGE_EXT, LABEL_EXT, IGNORE_EXT = "jpg", "lbl", "ign"
DALI_INDEX_VERSION = "v1.2"
_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def make_key(text: str) -> str:
    """A shard key from a file path or id: every character outside [A-Za-z0-9_-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def check_key(key: str) -> None:
    if not _KEY_OK.match(key):
        raise InputError(f"shard key {key!r} may only contain letters, digits, '_' and '-'")


def encode_multi_hot(ids: tuple[int, ...] | list[int], num_classes: int) -> bytes:
    row = np.zeros(num_classes, dtype=np.uint8)
    row[list(ids)] = 1
    return row.tobytes()


def decode_multi_hot(data: bytes, num_classes: int, where: str = "") -> np.ndarray:
    row = np.frombuffer(data, dtype=np.uint8)
    if row.size != num_classes or row.max(initial=0) > 1:
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}expected {num_classes} bytes of 0/1, got {row.size} bytes")
    return row


def read_index(idx_path: Path | str, expected: int | None = None, text: str | None = None
               ) -> list[tuple[str, dict[str, tuple[int, int]]]]:  # fmt: skip
    """[(key, {ext: (offset, size)})] from a DALI v1.2 index (its `text` when read elsewhere, as from object
    storage); errors name the file and line."""
    lines = (Path(idx_path).read_text() if text is None else text).splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != "v1.2":
        raise InputError(f"{idx_path}: not a DALI v1.2 webdataset index (first line {lines[:1]})")
    if expected is not None and (int(head[1]) != expected or len(lines) - 1 != expected):
        raise InputError(f"{idx_path}: lists {len(lines) - 1} samples, the split description says {expected}")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise InputError(f"{idx_path}:{n}: expected groups of 'ext offset size name'")
        members, key = {}, None
        for i in range(0, len(fields), 4):
            ext, offset, size, name = fields[i : i + 4]
            members[ext] = (int(offset), int(size))
            key = name.split(".", 1)[0]
        out.append((key, members))
    return out


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def split_json_path(shard_dir: Path | str, split: str) -> Path | str:
    return join(shard_dir, f"{split}.json")


def split_names(shard_dir: Path) -> list[str]:
    """The splits described in `shard_dir`: its JSON files with our format marker (not the class-name
    embeddings' or partitions' JSON beside them, nor the hidden build journals)."""
    names = []
    for path in sorted(Path(shard_dir).glob("[!.]*.json")):
        try:
            if json.loads(path.read_text()).get("format") == FORMAT:
                names.append(path.stem)
        except (OSError, ValueError, AttributeError):
            continue
    return names


def fingerprint(tar_path: Path) -> dict:
    """What identifies a checked tar: its size, modification time and CRC-32 (1-2 GB/s: read once
    when the check is recorded, and again only for a tar whose time changed)."""
    st = os.stat(tar_path)
    crc = 0
    with open(tar_path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32": crc}


@dataclass
class ShardEntry:
    tar: str
    index: str
    num_samples: int
    bytes: int
    # the tar as it was when its images were decode-checked ({bytes, mtime_ns, crc32}; empty: never):
    # a shard changed since (bit rot caught by a copy, an edit in place) is checked again before DALI
    # reads it (shards/verify.changed_shards)
    checked: dict = field(default_factory=dict)


@dataclass
class SplitInfo:
    """What `SPLIT.json` holds; `load` checks that every shard it lists is there."""

    dataset: str
    split: str
    classes: list[str]
    num_samples: int
    shards: list[ShardEntry]
    has_ignore: bool
    positives: list[int]  # images in which each class is positive
    ignored: list[int]  # images in which each class is marked ignore
    # C x C: images in which both classes are positive (diagonal = positives); [] above
    # shards/build.COOCCURRENCE_MAX_CLASSES classes (Open Images), where it would not fit
    cooccurrence: list[list[int]]
    labels_per_image: dict[str, float]
    dropped: dict[str, int] = field(default_factory=dict)  # samples left out, by reason
    reencoded: dict[str, int] = field(default_factory=dict)  # images re-encoded, by reason
    source: dict[str, str] = field(default_factory=dict)  # dataset conventions, root, command, version
    plan: dict[str, object] = field(default_factory=dict)  # what fixes the shard contents (resume check)
    # how the images were checked: "decode" (each decoded once, by make_shards or --verify; what DALI
    # needs), "structure" (JPEG markers only), "" (never: shards from elsewhere, or older ones)
    image_check: str = ""
    format: str = FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shard_paths(self, root: Path | str) -> list[Path | str]:
        """Each tar's location: a Path in a folder, a URL under an s3:// or http(s):// root."""
        return [join(root, s.tar) for s in self.shards]

    def index_paths(self, root: Path | str) -> list[Path | str]:
        return [join(root, s.index) for s in self.shards]

    def subset(self, classes: list[str], where: str) -> tuple[SplitInfo, list[int]]:
        """This split restricted to `classes` (names, in the order given): the restricted description
        (positives, ignored and co-occurrence of those classes) and each class's column in the shards'
        labels. `where` names the split in the error for a name the split does not have."""
        column = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in classes if c not in column]
        if unknown:
            import difflib

            hints = [f"{c!r}" + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(
                     c, self.classes, n=1, cutoff=0.5)) for c in unknown[:5]]  # fmt: skip
            raise InputError(f"{where}: class subset names {len(unknown)} classes the split does not have: "
                             + ", ".join(hints))  # fmt: skip
        cols = [column[c] for c in classes]
        mean_labels = sum(self.positives[c] for c in cols) / max(self.num_samples, 1)
        sub = dataclasses.replace(
            self,
            classes=list(classes),
            positives=[self.positives[c] for c in cols],
            ignored=[self.ignored[c] for c in cols],
            cooccurrence=[[self.cooccurrence[r][c] for c in cols] for r in cols] if self.cooccurrence else [],
            # per-image counts of a subset need every label again; the mean follows from the positives
            labels_per_image={"mean": round(mean_labels, 4)},
            source={**self.source, "class_subset": f"{len(cols)} of {len(self.classes)} classes"},
        )
        return sub, cols

    def save(self, path: Path) -> None:
        # one top-level key per line, values compact: readable, and fast for a 500 x 500 matrix
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["shards"] = [asdict(s) for s in self.shards]
        text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items()) + "\n}\n"
        write_atomic(Path(path), text.encode())

    @classmethod
    def load(cls, path: str | Path) -> SplitInfo:
        if is_url(path):
            return cls._load_remote(str(path))
        path = Path(path)
        if not path.is_file():
            if path.parent.is_dir():  # a mistyped split name: say which there are
                there = ", ".join(split_names(path.parent)) or "none"
                raise MissingInput(f"no {path.name} in {path.parent}; splits there: {there}")
            raise MissingInput(f"{path}: split description not found (run tools/make_shards.py first)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON: {e}") from None
        info = cls._from_raw(raw, path)
        for entry in info.shards:
            for name in (entry.tar, entry.index):
                if not (path.parent / name).is_file():
                    raise MissingInput(f"{path.parent / name}: listed in {path} but missing")
        return info

    @classmethod
    def _from_raw(cls, raw: dict, where: str | Path) -> SplitInfo:
        if raw.get("format") != FORMAT:
            raise InputError(f"{where}: format {raw.get('format')!r}, expected {FORMAT!r}")
        raw["shards"] = [ShardEntry(**s) for s in raw["shards"]]
        return cls(**raw)

    @classmethod
    def _load_remote(cls, url: str) -> SplitInfo:
        """From object storage: SPLIT.json, then one look at every object it lists. A tar of another size
        than the one written is a partial upload or another build's, and is refused here rather than read."""
        from .storage import ObjectMissing, open_store

        root, name = split_location(url)
        store = open_store(root)
        try:
            text = store.read(name)
        except ObjectMissing as e:
            raise MissingInput(f"{e}: no split description there (is data.shards the location holding "
                               f"<dataset>/<split>.json, uploaded by tools/make_shards.py --out?)") from None
        try:
            info = cls._from_raw(json.loads(text), url)
        except json.JSONDecodeError as e:
            raise InputError(f"{url}: not valid JSON: {e}") from None
        wanted = [n for e in info.shards for n in (e.tar, e.index)]
        sizes = store.sizes(wanted)
        missing = [store.url(n) for n in wanted if sizes[n] is None]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise MissingInput(f"{', '.join(missing[:3])}{more}: listed in {url} but not there (HTTP 404); "
                               f"upload the split again (tools/make_shards.py --out URL)")
        for entry in info.shards:
            if sizes[entry.tar] != entry.bytes:
                raise InputError(f"{store.url(entry.tar)}: {sizes[entry.tar]} bytes, {url} says "
                                 f"{entry.bytes}: another build's shard; upload the split again")
        return info


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename, so a crash never leaves a file that looks complete."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a read-only folder, Ctrl-C: no temporary file stays behind
        tmp.unlink(missing_ok=True)
        raise
