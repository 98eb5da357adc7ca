"""Random access to a split's samples through the DALI index files (`.idx`) that make_shards writes.

The index gives each member's byte offset and size in its tar, so one `pread` (one ranged GET on object
storage) fetches a sample's members without scanning the archive, and both backends agree on the sample
order that DDP partitions.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..shards.format import IGNORE_EXT, IMAGE_EXT, LABEL_EXT, SplitInfo, read_index
from ..shards.storage import is_url, open_store


class BadSample(InputError):
    """A sample that cannot be read: the message names the member and what is wrong with it."""


@dataclass(frozen=True)
class SampleRef:
    shard: int  # position in SplitInfo.shards
    key: str
    members: dict[str, tuple[int, int]]  # extension -> (offset, size) in the tar


class ShardIndex:
    """Every sample of a split in shard order: `refs[i]` says where sample i's members are."""

    def __init__(self, info: SplitInfo, root: Path | str):
        self.info = info
        self.tars = [str(p) for p in info.shard_paths(root)]
        self.store = open_store(root) if is_url(root) else None
        self.refs: list[SampleRef] = []
        required = (IMAGE_EXT, LABEL_EXT) + ((IGNORE_EXT,) if info.has_ignore else ())
        texts = [None] * len(info.shards)
        if self.store is not None:  # thousands of small objects: fetched side by side, not one by one
            with ThreadPoolExecutor(16) as pool:
                texts = list(pool.map(lambda e: self.store.read(e.index).decode(), info.shards))
        for shard, (entry, idx) in enumerate(zip(info.shards, info.index_paths(root), strict=True)):
            for key, members in read_index(idx, entry.num_samples, texts[shard]):
                missing = [e for e in required if e not in members]
                if missing:
                    raise InputError(f"{idx}: sample {key} has no .{missing[0]} member")
                self.refs.append(SampleRef(shard, key, members))
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def read(self, i: int, ext: str) -> bytes:
        return self.read_members(i, (ext,))[ext]

    def read_members(self, i: int, exts: tuple[str, ...]) -> dict[str, bytes]:
        """Sample i's members `exts`, fetched in one read of the span that holds them all (a tar keeps a
        sample's members together: the span adds only their 512-byte headers)."""
        ref = self.refs[i]
        start = min(ref.members[e][0] for e in exts)
        end = max(ref.members[e][0] + ref.members[e][1] for e in exts)
        if self.store is not None:
            span = self.store.read_range(self.info.shards[ref.shard].tar, start, end - start)
        else:
            fd = self._fds.get(ref.shard)
            if fd is None:  # opened lazily: each DataLoader worker gets its own descriptors
                fd = self._fds[ref.shard] = os.open(self.tars[ref.shard], os.O_RDONLY)
            span = os.pread(fd, end - start, start)
        out = {}
        for ext in exts:
            offset, size = ref.members[ext]
            data = span[offset - start : offset - start + size]
            if len(data) != size:
                raise BadSample(f"{ref.key}.{ext} is cut short: {len(data)} of {size} bytes "
                                f"(a truncated tar)")  # fmt: skip
            out[ext] = data
        return out

    def __getstate__(self):  # descriptors do not cross process boundaries
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state
