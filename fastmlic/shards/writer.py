"""Write one shard: a tar of (KEY.jpg, KEY.lbl[, KEY.ign]) samples plus its DALI index, atomically.

The index is written from the offsets we produce while writing, instead of re-scanning the tar
with DALI's `wds2idx`. The tar is renamed into place first and the index last, so an index beside
a tar means the shard is complete.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .format import DALI_INDEX_VERSION, check_key

BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class ShardSample:
    key: str
    members: tuple[tuple[str, bytes], ...]  # (extension, payload) in the order they go into the tar


def _index_line(components: list[tuple[str, int, int, str]]) -> str:
    return " ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in components)


def write_shard(tar_path: Path, samples: list[ShardSample]) -> int:
    """Write `samples` to `tar_path` and its `.idx`; returns the tar's size in bytes."""
    tar_path = Path(tar_path)
    idx_path = tar_path.with_suffix(".idx")
    tmp_tar = tar_path.with_name(f".{tar_path.name}.tmp{os.getpid()}")
    tmp_idx = idx_path.with_name(f".{idx_path.name}.tmp{os.getpid()}")
    for sample in samples:  # before anything is opened: a bad key leaves no temporary behind
        check_key(sample.key)
    try:
        lines = []
        with open(tmp_tar, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for sample in samples:
                components = []
                for ext, payload in sample.members:
                    info = tarfile.TarInfo(f"{sample.key}.{ext}")
                    info.size, info.mode, info.mtime = len(payload), 0o644, 0
                    tf.addfile(info, io.BytesIO(payload))
                    # tf.offset now points past this member's padded data, whatever headers preceded it
                    data_offset = tf.offset - (len(payload) + BLOCK - 1) // BLOCK * BLOCK
                    components.append((ext, data_offset, len(payload), info.name))
                lines.append(_index_line(components))
        tmp_idx.write_text(f"{DALI_INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines))
        size = tmp_tar.stat().st_size
        os.replace(tmp_tar, tar_path)
        os.replace(tmp_idx, idx_path)
    except BaseException:  # a full disk, a read-only folder, Ctrl-C: no temporary file stays behind
        tmp_tar.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
        raise
    return size


def is_complete(tar_path: Path) -> bool:
    """A shard whose tar and index were both renamed into place by `write_shard`."""
    return Path(tar_path).is_file() and Path(tar_path).with_suffix(".idx").is_file()


def read_labels(tar_path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {"lbl": ..., "ign": ...}}: the label members of an existing shard, images skipped."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tf:
        for member in tf:
            key, _, ext = member.name.partition(".")
            if ext in ("lbl", "ign"):
                out.setdefault(key, {})[ext] = tf.extractfile(member).read()
    return out
