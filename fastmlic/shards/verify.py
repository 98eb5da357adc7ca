"""Check existing shards, written by any tool, for images that would stop a DALI pipeline, and repair them.

DALI cannot skip an undecodable image: the whole pipeline stops, for garbage bytes without even
naming the file. So shards from elsewhere are checked here in one pass: every image member is
decoded once, and every label member must be C bytes of 0/1 when a SPLIT.json gives C. `repair`
rewrites each affected shard without its bad samples (all members of their keys; a truncated tar
keeps the whole samples before the cut) and updates SPLIT.json's counts and label statistics. A
split found clean is marked decode-checked in its SPLIT.json, which is what lets DALI read it.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .build import LabelStats
from .format import IGNORE_EXT, LABEL_EXT, ShardEntry, SplitInfo, decode_multi_hot, fingerprint, read_index
from .images import BadImage, prepare_image
from .writer import ShardSample, write_shard

IMAGE_EXTS = ("jpg", "jpeg", "png")
INDEX_KEY = "*index"  # a BadMember for the shard's index, not for one of its samples


@dataclass(frozen=True)
class BadMember:
    shard: str
    key: str
    member: str
    reason: str

    def describe(self) -> str:
        """'SHARD: MEMBER: why' ('SHARD: why' for the tar itself)."""
        what = "" if self.key == "*" else f" {self.member}:"
        return f"{self.shard}:{what} {self.reason}"


def _key_and_ext(name: str) -> tuple[str, str]:
    """As webdataset splits a member name: the key keeps any directory part and ends at the first dot
    of the file name."""
    dot = name.find(".", name.rfind("/") + 1)
    return (name[:dot], name[dot + 1 :]) if dot >= 0 else (name, "")


Members = dict[str, list[tuple[str, bytes]]]  # {key: [(extension, payload), ...]}


def _samples(tar_path: Path, payloads: bool = True) -> tuple[Members, dict[str, dict], str | None]:
    """{key: [(extension, payload), ...]} in tar order (`_key_and_ext`; empty without `payloads`, when
    only the headers are read); where each member's data lies, {key: {extension: (offset, size)}} as
    an index lists it; and why reading stopped early (a truncated or damaged tar), else None. After a
    stop the samples before it are whole; the one being read when the tar ended may lack members, so
    it is left out."""
    samples: dict[str, list[tuple[str, bytes]]] = {}
    layout: dict[str, dict] = {}
    key = None
    try:
        with tarfile.open(tar_path) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _key_and_ext(member.name)
                if payloads:
                    samples.setdefault(key, []).append((ext, tf.extractfile(member).read()))
                layout.setdefault(key, {})[ext] = (member.offset_data, member.size)
            # tarfile takes a cut inside or right before a header for the archive's end; a whole tar
            # ends with two zero blocks after its last member
            if Path(tar_path).stat().st_size < tf.offset + 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"no end-of-archive blocks after byte {tf.offset}")
    except (tarfile.TarError, OSError, EOFError) as e:
        samples.pop(key, None)
        layout.pop(key, None)
        return samples, layout, str(e) or type(e).__name__
    return samples, layout, None


def index_problem(tar_path: Path) -> str | None:
    """Why the index beside `tar_path` does not describe it, or None; reads the tar's headers only. A
    tar cut short is compared up to the cut (its readers skip what is missing; a stale index is not)."""
    _, layout, stopped = _samples(tar_path, payloads=False)
    return _index_disagreement(Path(tar_path).with_suffix(".idx"), layout, cut=stopped is not None)


def _index_disagreement(idx_path: Path, layout: dict[str, dict], cut: bool = False) -> str | None:
    """Why the index does not describe the tar (a tar rewritten after its index was made: readers
    would fetch other bytes than the members, labels of the wrong length among them), or None. `cut`:
    the tar ended early, so `layout` holds its samples before the cut only."""
    try:
        listed = read_index(idx_path)
    except (InputError, OSError, ValueError) as e:
        return f"unreadable index: {e}"
    if len(listed) != len(layout) and not (cut and len(listed) > len(layout)):
        return f"the index lists {len(listed)} samples, the tar holds {len(layout)}: it is stale"
    for key, members in listed[: len(layout)]:
        if layout.get(key) != members:
            where = ", ".join(f"{e} at {o} ({n} bytes)" for e, (o, n) in sorted(members.items()))
            return f"the index places sample {key} at {where}, which the tar does not: it is stale"
    return None


def _split_infos(shard_dir: Path) -> dict[str, tuple[Path, SplitInfo]]:
    """{tar file name: (SPLIT.json path, its SplitInfo)} for the splits described in `shard_dir`."""
    out = {}
    for path in sorted(shard_dir.glob("*.json")):
        try:
            info = SplitInfo.load(path)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError):
            continue  # not a split description of ours
        for entry in info.shards:
            out[entry.tar] = (path, info)
    return out


def check_shard(tar_path: Path, num_classes: int | None) -> tuple[list[BadMember], int]:
    """Bad members of one shard and its number of readable samples. A tar that ends early (cut short
    by a copy or a full disk) is one `BadMember` with key "*"; the samples before the cut are checked
    as usual, and `repair` keeps the good ones. An index beside the tar that does not describe it is
    one `BadMember` with key INDEX_KEY (`repair` writes it again)."""
    tar_path = Path(tar_path)
    bad = []
    samples, layout, stopped = _samples(tar_path)
    if stopped is not None:
        reason = f"the tar ends early, after {len(samples)} whole samples ({stopped})"
        bad.append(BadMember(tar_path.name, "*", "*", reason))
    idx_path = tar_path.with_suffix(".idx")
    if idx_path.is_file() and (why := _index_disagreement(idx_path, layout, cut=stopped is not None)):
        bad.append(BadMember(tar_path.name, INDEX_KEY, idx_path.name, why))
    for key, members in samples.items():
        for ext, payload in members:
            if ext in IMAGE_EXTS:
                try:
                    prepare_image(payload)
                except BadImage as e:
                    bad.append(BadMember(tar_path.name, key, f"{key}.{ext}", str(e)))
            elif ext in (LABEL_EXT, IGNORE_EXT) and num_classes is not None:
                try:
                    decode_multi_hot(payload, num_classes)  # the member is named by describe()
                except ValueError as e:
                    bad.append(BadMember(tar_path.name, key, f"{key}.{ext}", str(e)))
    return bad, len(samples)


def unchanged_since_check(entry: ShardEntry, root: Path, by_content: bool = True) -> bool:
    """The shard's tar is the one its decode check saw: same size and time, or (copied or touched
    since; only `by_content`) same size and CRC-32. Edits in place, copies cut short and bad copies all
    fail this; bit rot that leaves the time alone does not (`make_shards.py --verify` decodes
    everything)."""
    recorded, path = entry.checked, Path(root) / entry.tar
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not recorded or st.st_size != recorded["bytes"]:
        return False
    if st.st_mtime_ns == recorded["mtime_ns"]:
        return True
    return by_content and fingerprint(path)["crc32"] == recorded["crc32"]


def changed_shards(info: SplitInfo, root: Path, by_content: bool = True) -> list[ShardEntry]:
    """The split's shards whose images are not known to decode: all of them where no decode check is
    recorded, else those changed since it. Without `by_content` a tar with a new time counts as
    changed without reading it for its CRC (for a caller whose own check is cheaper than that read)."""
    if info.image_check != "decode":
        return list(info.shards)
    return [e for e in info.shards if not unchanged_since_check(e, root, by_content)]


def verify(shard_dir: Path, progress=lambda n: None) -> tuple[list[BadMember], int]:
    """Every bad member of every `*.tar` in `shard_dir`, and the number of samples checked."""
    infos = _split_infos(Path(shard_dir))
    bad, total = [], 0
    for tar_path in sorted(Path(shard_dir).glob("*.tar")):
        info = infos.get(tar_path.name, (None, None))[1]
        shard_bad, count = check_shard(tar_path, info.num_classes if info else None)
        bad += shard_bad
        total += count
        progress(1)
    return bad, total


def repair(shard_dir: Path, bad: list[BadMember]) -> list[Path]:
    """Rewrite the shards named in `bad` without those samples (a truncated tar: with the whole
    samples before the cut) and update their SPLIT.json; each split left with only checked images
    records that (`SplitInfo.image_check`)."""
    shard_dir = Path(shard_dir)
    infos = _split_infos(shard_dir)
    rewritten, touched = [], {}
    for shard in sorted({b.shard for b in bad}):
        keys = {b.key for b in bad if b.shard == shard}
        tar_path = shard_dir / shard
        kept = [ShardSample(k, tuple(m)) for k, m in _samples(tar_path)[0].items() if k not in keys]
        size = write_shard(tar_path, kept)
        rewritten.append(tar_path)
        if shard in infos:
            json_path, info = infos[shard]
            touched[json_path] = info
            entry = next(e for e in info.shards if e.tar == shard)
            info.shards[info.shards.index(entry)] = ShardEntry(entry.tar, entry.index, len(kept), size)
            lost = entry.num_samples - len(kept)
            if lost:
                reason = "truncated tar" if "*" in keys else "corrupt image"
                info.dropped[reason] = info.dropped.get(reason, 0) + lost
    for json_path, info in touched.items():
        _recount(shard_dir, info)
        info.save(json_path)
    record_checked(shard_dir, [])
    return rewritten


def record_checked(shard_dir: Path, bad: list[BadMember]) -> list[str]:
    """Mark each split in `shard_dir` none of whose shards is in `bad` as decode-checked in its
    SPLIT.json, with each shard's fingerprint (what the DALI loader asks for); returns the splits marked."""
    marked = []
    bad_shards = {b.shard for b in bad}
    by_json = {json_path: info for json_path, info in _split_infos(Path(shard_dir)).values()}
    for json_path, info in by_json.items():
        if not bad_shards & {e.tar for e in info.shards}:
            info.image_check = "decode"
            for entry in info.shards:
                entry.checked = fingerprint(Path(shard_dir) / entry.tar)
            info.save(json_path)
            marked.append(info.split)
    return marked


def _recount(shard_dir: Path, info: SplitInfo) -> None:
    """Label statistics of `info` from what its shards now hold."""
    stats = LabelStats(info.num_classes)
    for tar_path in info.shard_paths(shard_dir):
        stats.add_shard(tar_path)
    info.num_samples = sum(e.num_samples for e in info.shards)
    info.positives = stats.positives.tolist()
    info.ignored = stats.ignored.tolist()
    info.cooccurrence = stats.cooccurrence.tolist()
    info.labels_per_image = stats.labels_per_image()


def report_lines(bad: list[BadMember]) -> list[str]:
    return [f"{b.shard}\t{b.member}\t{b.reason}" for b in bad]
