"""Write a listed split as shards: order, chunk, prepare images in parallel, write, describe.

Resumable: the split's plan (sample keys, shard size, image options) is fixed before any shard is
written and stored beside the shards; a re-run with the same plan skips the shards that are already
complete and reads their labels back for the statistics, a re-run with another plan stops.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .format import (
    FORMAT,
    IGNORE_EXT,
    IMAGE_EXT,
    LABEL_EXT,
    ShardEntry,
    SplitInfo,
    check_key,
    decode_multi_hot,
    encode_multi_hot,
    fingerprint,
    shard_name,
    split_json_path,
    write_atomic,
)
from .images import BadImage, prepare_image
from .listing import Sample, SplitListing
from .writer import ShardSample, is_complete, read_labels, write_shard


@dataclass(frozen=True)
class ImageOptions:
    max_side: int | None = None
    quality: int = 95
    check: str = "decode"  # or "structure": see images.prepare_image


@dataclass(frozen=True)
class WriteOptions:
    """How a split is written (the same for every split of a shard set)."""

    shard_size: int = 1000  # samples per shard
    image: ImageOptions = ImageOptions()
    workers: int = 1  # processes that prepare images
    overwrite: bool = False  # rewrite shards written with other settings


@dataclass
class SplitReport:
    split: str
    info: SplitInfo
    json_path: Path
    shards_written: int = 0
    shards_reused: int = 0
    bad: list[tuple[str, str, str, str]] = field(default_factory=list)  # (shard, key, source, reason)
    stray: list[str] = field(default_factory=list)  # files under the split's names it does not list


def _prepare(job: tuple[int, Path | bytes, ImageOptions]) -> tuple[int, bytes | None, str | None, str | None]:
    """Worker: (position, re-encoded jpeg or None, re-encode reason, error). Runs in a pool process.

    A passthrough image comes back as None: the writer reads the original bytes itself, from the
    page cache, instead of receiving them pickled through a pipe.
    """
    position, source, options = job
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        prepared = prepare_image(data, options.max_side, options.quality, options.check)
        return position, prepared.jpeg if prepared.reencoded else None, prepared.reencoded, None
    except (BadImage, OSError) as e:
        return position, None, None, str(e)


def _plan(listing: SplitListing, shard_size: int, options: ImageOptions, order: list[int]) -> dict:
    """What fixes the split's contents: a re-run with the same plan resumes, with another it stops."""
    digest = hashlib.sha256()
    for i in order:
        s = listing.samples[i]
        negatives = "" if s.negatives is None else f":{list(s.negatives)}"
        digest.update(f"{s.key}:{tuple(s.positives)}:{tuple(s.ignored)}{negatives};".encode())
    return {
        "samples": len(order),
        "shard_size": shard_size,
        "max_side": options.max_side,
        "quality": options.quality,
        "keys_labels_sha256": digest.hexdigest(),
    }


def _check_plan(out_dir: Path, split: str, plan: dict, overwrite: bool) -> Path:
    """Where the split's plan is kept while it is written. Refuses (without --overwrite) shards written
    with another plan, and files under the split's names that make_shards did not write: a SPLIT.json
    of another format, or shard files that no plan or SPLIT.json of ours accounts for."""
    plan_path = out_dir / f".{split}.plan.json"
    json_path = split_json_path(out_dir, split)
    retry = "pass --overwrite to replace {}, or choose another --out"
    old = None
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
    elif json_path.is_file():
        try:
            raw = json.loads(json_path.read_text())
        except (ValueError, UnicodeDecodeError):
            raw = None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            if not overwrite:
                raise InputError(f"{json_path} exists and is not a split description make_shards wrote (no "
                                 f"{FORMAT!r} format marker); {retry.format('it')}")  # fmt: skip
        else:
            old = raw.get("plan")
    elif not overwrite and (foreign := sorted(p.name for p in out_dir.glob(f"{split}-*.*"))):
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise InputError(f"{out_dir}: {shown} were not written by make_shards for split '{split}' (no "
                         f"{json_path.name} or unfinished build of ours lists them); "
                         f"{retry.format('them')}")  # fmt: skip
    if old is not None and old != plan and not overwrite:
        changed = sorted(k for k in plan if old.get(k) != plan[k])
        raise InputError(
            f"{out_dir}: shards of split '{split}' were written with other settings ({', '.join(changed)} "
            f"differ); {retry.format('them')}"
        )
    if overwrite:
        for stale in out_dir.glob(f"{split}-*.*"):
            stale.unlink()
    write_atomic(plan_path, json.dumps(plan).encode())
    return plan_path


def stray_shards(out_dir: Path, info: SplitInfo) -> list[str]:
    """Shard files under the split's names that its SPLIT.json does not list (left by hand or by
    another tool): readers never see them, a user copying the folder should know."""
    listed = {name for e in info.shards for name in (e.tar, e.index)}
    return sorted(p.name for p in out_dir.glob(f"{info.split}-*.*") if p.name not in listed)


# Above this many classes SPLIT.json records no co-occurrence matrix: Open Images' 9,605 classes would
# make it 92 M counts (740 MB in memory, hundreds of MB of JSON); VG500's 500 give 250 k
COOCCURRENCE_MAX_CLASSES = 2048


class LabelStats:
    """Label statistics accumulated over every written sample."""

    def __init__(self, num_classes: int):
        self.positives = np.zeros(num_classes, np.int64)
        self.ignored = np.zeros(num_classes, np.int64)
        keep = num_classes <= COOCCURRENCE_MAX_CLASSES
        self.cooccurrence = np.zeros((num_classes, num_classes) if keep else (0, 0), np.int64)
        self.cardinality: Counter[int] = Counter()

    def add(self, label_row: np.ndarray, ignore_row: np.ndarray | None) -> None:
        ids = np.flatnonzero(label_row)
        self.positives[ids] += 1
        if self.cooccurrence.size:
            self.cooccurrence[np.ix_(ids, ids)] += 1
        self.cardinality[len(ids)] += 1
        if ignore_row is not None:
            self.ignored += ignore_row

    def add_shard(self, tar_path: Path) -> int:
        """Add every sample of an existing shard (labels only); returns how many there were."""
        labels = read_labels(tar_path)
        num_classes = len(self.positives)
        for key, members in labels.items():
            ign = members.get(IGNORE_EXT)
            where = f"{tar_path}: {key}"
            self.add(decode_multi_hot(members[LABEL_EXT], num_classes, where),
                     decode_multi_hot(ign, num_classes, where) if ign is not None else None)  # fmt: skip
        return len(labels)

    def labels_per_image(self) -> dict[str, float]:
        n = sum(self.cardinality.values())
        mean = sum(k * v for k, v in self.cardinality.items()) / max(n, 1)
        return {
            "mean": round(mean, 4),
            "min": min(self.cardinality, default=0),
            "max": max(self.cardinality, default=0),
            **{f"n={k}": v for k, v in sorted(self.cardinality.items())},
        }


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def _prepared(samples: list[Sample], positions: list[int], options: ImageOptions, pool) -> Iterator[tuple]:
    """Results for `positions` in order: one stream over all shards keeps the pool busy during tar writes."""
    jobs = ((i, samples[i].image, options) for i in positions)
    return pool.imap(_prepare, jobs, chunksize=16) if pool is not None else map(_prepare, jobs)


def _check_listing(listing: SplitListing, split: str, dataset: str) -> None:
    """Samples to write, each under a key DALI and webdataset can read, once."""
    if not listing.samples:  # an empty split would only fail later, inside a loader
        dropped = ", ".join(f"{n} {why}" for why, n in listing.dropped.items()) or "none listed"
        raise InputError(f"split '{split}' of {dataset} has no samples to write (dropped: {dropped})")
    keys = [s.key for s in listing.samples]
    for key in keys:
        check_key(key)
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    if duplicates:
        raise InputError(f"split '{split}' has {len(duplicates)} duplicate keys (first: {duplicates[:3]})")


class _SplitWriter:
    """Writes one split's shards in order, or takes the complete ones a previous run left, and gathers
    what SPLIT.json says of them: entries, label statistics, re-encodes and skipped images. A journal
    beside the shards records each finished shard's re-encodes and skipped images as it lands, so a
    resumed run reports what the interrupted one found in the shards it keeps."""

    def __init__(self, listing: SplitListing, out_dir: Path, split: str, overwrite: bool):
        self.listing, self.out_dir, self.split = listing, out_dir, split
        self.stats = LabelStats(len(listing.classes))
        self.journal_path = out_dir / f".{split}.journal.json"
        journal = self.journal_path
        self.journal = json.loads(journal.read_text()) if journal.is_file() and not overwrite else {}
        self.entries: list[ShardEntry] = []
        self.reencoded: Counter[str] = Counter()
        self.bad: list[tuple[str, str, str, str]] = []  # (shard, key, source, reason)
        self.written = self.reused = 0

    def reuse(self, name: str) -> int:
        """Take a complete shard as it is: its labels into the statistics, its journal into the report."""
        tar_path = self.out_dir / f"{name}.tar"
        count = self.stats.add_shard(tar_path)
        done = self.journal.get(name, {})
        self.reencoded.update(done.get("reencoded", {}))
        self.bad += [tuple(b) for b in done.get("bad", [])]
        self.entries.append(ShardEntry(f"{name}.tar", f"{name}.idx", count, tar_path.stat().st_size))
        self.reused += 1
        return count

    def write(self, name: str, results, progress: Callable[[int], None]) -> None:
        """One shard from its samples' prepared images (`results`: `_prepare`'s, in order)."""
        listing, num_classes = self.listing, len(self.listing.classes)
        written, bad, reencoded = [], [], Counter()
        for position, jpeg, reason, error in results:
            s = listing.samples[position]
            progress(1)
            if error is not None:
                bad.append((name, s.key, str(s.image) if isinstance(s.image, Path) else "<generated>", error))
                continue
            if reason:
                reencoded[reason] += 1
            label = encode_multi_hot(s.positives, num_classes)
            members = [(IMAGE_EXT, jpeg if jpeg is not None else s.read()), (LABEL_EXT, label)]
            ignore_row = None
            if listing.has_ignore:
                ignore_row = s.ignore_row(num_classes)
                members.append((IGNORE_EXT, ignore_row.tobytes()))
            self.stats.add(np.frombuffer(label, np.uint8), ignore_row)
            written.append(ShardSample(s.key, tuple(members)))
        size = write_shard(self.out_dir / f"{name}.tar", written)
        self.journal[name] = {"reencoded": dict(reencoded), "bad": bad}
        write_atomic(self.journal_path, json.dumps(self.journal).encode())
        self.reencoded.update(reencoded)
        self.bad += bad
        self.entries.append(ShardEntry(f"{name}.tar", f"{name}.idx", len(written), size))
        self.written += 1

    def dropped(self) -> dict[str, int]:
        """Samples left out, by reason: the reader's conventions, then the images that could not be read
        (listed one per line in SPLIT.skipped.tsv)."""
        dropped = dict(self.listing.dropped)
        tsv = self.out_dir / f"{self.split}.skipped.tsv"
        if self.bad:
            dropped["corrupt image"] = dropped.get("corrupt image", 0) + len(self.bad)
            rows = ["shard\tkey\tsource\treason"] + ["\t".join(b) for b in self.bad]
            write_atomic(tsv, ("\n".join(rows) + "\n").encode())
        elif tsv.exists():
            tsv.unlink()
        if not any(e.num_samples for e in self.entries):
            raise InputError(f"split '{self.split}': no image could be written ({dropped}); see {tsv}")
        return dropped


def build_split(
    listing: SplitListing,
    out_dir: Path,
    split: str,
    *,
    dataset: str,
    options: WriteOptions = WriteOptions(),
    shuffle_seed: int | None = None,
    source: dict[str, str] | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> SplitReport:
    """Write `listing` as `out_dir/split-NNNNNN.tar` shards and `out_dir/split.json`; a training split is
    shuffled once here (`shuffle_seed`) so readers can stream its shards in order."""
    out_dir = Path(out_dir)
    _check_listing(listing, split, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = list(range(len(listing.samples)))
    if shuffle_seed is not None:
        order = [int(i) for i in np.random.default_rng(shuffle_seed).permutation(len(order))]
    plan = _plan(listing, options.shard_size, options.image, order)
    plan_path = _check_plan(out_dir, split, plan, options.overwrite)
    chunks = _chunks(order, options.shard_size)
    names = [shard_name(split, i) for i in range(len(chunks))]
    complete = {i for i, name in enumerate(names) if is_complete(out_dir / f"{name}.tar")}
    writer = _SplitWriter(listing, out_dir, split, options.overwrite)
    pool = multiprocessing.get_context("fork").Pool(options.workers) if options.workers > 1 else None
    try:
        todo = [i for index, chunk in enumerate(chunks) if index not in complete for i in chunk]
        results = _prepared(listing.samples, todo, options.image, pool)
        for index, (name, chunk) in enumerate(zip(names, chunks, strict=True)):
            if index in complete:
                writer.reuse(name)
                progress(len(chunk))
            else:
                writer.write(name, itertools.islice(results, len(chunk)), progress)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    info = SplitInfo(
        dataset=dataset, split=split, classes=list(listing.classes),
        num_samples=sum(e.num_samples for e in writer.entries), shards=writer.entries,
        has_ignore=listing.has_ignore, positives=writer.stats.positives.tolist(),
        ignored=writer.stats.ignored.tolist(), cooccurrence=writer.stats.cooccurrence.tolist(),
        labels_per_image=writer.stats.labels_per_image(), dropped=writer.dropped(),
        reencoded=dict(writer.reencoded), source={"conventions": listing.conventions, **(source or {})},
        plan=plan, image_check=options.image.check,
    )  # fmt: skip
    if options.image.check == "decode":  # what the check saw, so a shard changed later is checked again
        for entry in info.shards:
            entry.checked = fingerprint(out_dir / entry.tar)
    json_path = split_json_path(out_dir, split)
    info.save(json_path)
    plan_path.unlink()
    return SplitReport(split, info, json_path, writer.written, writer.reused, writer.bad,
                       stray_shards(out_dir, info))  # fmt: skip
