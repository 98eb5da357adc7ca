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

from ..datasets import Sample, SplitListing
from ..errors import InputError
from .format import (
    IGNORE_EXT,
    IMAGE_EXT,
    LABEL_EXT,
    ShardEntry,
    SplitInfo,
    check_key,
    decode_multi_hot,
    encode_multi_hot,
    shard_name,
    split_json_path,
    write_atomic,
)
from .images import BadImage, prepare_image
from .writer import ShardSample, is_complete, read_labels, write_shard


@dataclass(frozen=True)
class ImageOptions:
    max_side: int | None = None
    quality: int = 95
    check: str = "decode"  # or "structure": see images.prepare_image


@dataclass
class SplitReport:
    split: str
    info: SplitInfo
    json_path: Path
    shards_written: int = 0
    shards_reused: int = 0
    bad: list[tuple[str, str, str, str]] = field(default_factory=list)  # (shard, key, source, reason)


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
    digest = hashlib.sha256()
    for i in order:
        s = listing.samples[i]
        digest.update(f"{s.key}:{s.positives}:{s.ignored};".encode())
    return {
        "samples": len(order),
        "shard_size": shard_size,
        "max_side": options.max_side,
        "quality": options.quality,
        "keys_labels_sha256": digest.hexdigest(),
    }


def _check_plan(out_dir: Path, split: str, plan: dict, overwrite: bool) -> Path:
    plan_path = out_dir / f".{split}.plan.json"
    old = None
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())
    elif split_json_path(out_dir, split).is_file():
        old = json.loads(split_json_path(out_dir, split).read_text()).get("plan")
    if old is not None and old != plan and not overwrite:
        changed = sorted(k for k in plan if old.get(k) != plan[k])
        raise InputError(
            f"{out_dir}: shards of split '{split}' were written with other settings ({', '.join(changed)} "
            f"differ); pass --overwrite to rewrite them or choose another --out"
        )
    if overwrite:
        for stale in out_dir.glob(f"{split}-*.*"):
            stale.unlink()
    write_atomic(plan_path, json.dumps(plan).encode())
    return plan_path


class LabelStats:
    """Label statistics accumulated over every written sample."""

    def __init__(self, num_classes: int):
        self.positives = np.zeros(num_classes, np.int64)
        self.ignored = np.zeros(num_classes, np.int64)
        self.cooccurrence = np.zeros((num_classes, num_classes), np.int64)
        self.cardinality: Counter[int] = Counter()

    def add(self, label_row: np.ndarray, ignore_row: np.ndarray | None) -> None:
        ids = np.flatnonzero(label_row)
        self.positives[ids] += 1
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


def build_split(
    listing: SplitListing,
    out_dir: Path,
    split: str,
    *,
    dataset: str,
    shard_size: int = 1000,
    options: ImageOptions = ImageOptions(),
    workers: int = 1,
    shuffle_seed: int | None = None,
    source: dict[str, str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] = lambda n: None,
) -> SplitReport:
    """Write `listing` as `out_dir/split-NNNNNN.tar` shards and `out_dir/split.json`."""
    out_dir = Path(out_dir)
    if not listing.samples:  # an empty split would only fail later, inside a loader
        dropped = ", ".join(f"{n} {why}" for why, n in listing.dropped.items()) or "none listed"
        raise InputError(f"split '{split}' of {dataset} has no samples to write (dropped: {dropped})")
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [s.key for s in listing.samples]
    for key in keys:
        check_key(key)
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    if duplicates:
        raise InputError(f"split '{split}' has {len(duplicates)} duplicate keys (first: {duplicates[:3]})")

    order = list(range(len(listing.samples)))
    if shuffle_seed is not None:  # shuffle once at write time so readers can stream shards in order
        order = [int(i) for i in np.random.default_rng(shuffle_seed).permutation(len(order))]
    plan = _plan(listing, shard_size, options, order)
    plan_path = _check_plan(out_dir, split, plan, overwrite)

    num_classes = len(listing.classes)
    stats = LabelStats(num_classes)
    report_path = out_dir / f"{split}.skipped.tsv"
    # per shard: why images were re-encoded and which were skipped, saved as each shard lands, so a
    # resumed run reports what the interrupted one found in the shards it keeps
    journal_path = out_dir / f".{split}.journal.json"
    journal = json.loads(journal_path.read_text()) if journal_path.is_file() and not overwrite else {}
    report = SplitReport(split, None, split_json_path(out_dir, split))  # type: ignore[arg-type]
    entries, reencoded = [], Counter()
    chunks = _chunks(order, shard_size)
    complete = {i for i in range(len(chunks)) if is_complete(out_dir / f"{shard_name(split, i)}.tar")}
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        todo = [i for index, chunk in enumerate(chunks) if index not in complete for i in chunk]
        results = _prepared(listing.samples, todo, options, pool)
        for index, chunk in enumerate(chunks):
            name = shard_name(split, index)
            tar_path = out_dir / f"{name}.tar"
            if index in complete:
                count = stats.add_shard(tar_path)
                done = journal.get(name, {})
                reencoded.update(done.get("reencoded", {}))
                report.bad += [tuple(b) for b in done.get("bad", [])]
                entries.append(ShardEntry(f"{name}.tar", f"{name}.idx", count, tar_path.stat().st_size))
                report.shards_reused += 1
                progress(len(chunk))
                continue
            written, shard_bad, shard_reencoded = [], [], Counter()
            for position, jpeg, reason, error in itertools.islice(results, len(chunk)):
                s = listing.samples[position]
                progress(1)
                if error is not None:
                    shard_bad.append(
                        (name, s.key, str(s.image) if isinstance(s.image, Path) else "<generated>", error)
                    )
                    continue
                if reason:
                    shard_reencoded[reason] += 1
                label = encode_multi_hot(s.positives, num_classes)
                members = [(IMAGE_EXT, jpeg if jpeg is not None else s.read()), (LABEL_EXT, label)]
                ignore_row = None
                if listing.has_ignore:
                    members.append((IGNORE_EXT, encode_multi_hot(s.ignored, num_classes)))
                    ignore_row = np.frombuffer(members[-1][1], np.uint8)
                stats.add(np.frombuffer(label, np.uint8), ignore_row)
                written.append(ShardSample(s.key, tuple(members)))
            size = write_shard(tar_path, written)
            journal[name] = {"reencoded": dict(shard_reencoded), "bad": shard_bad}
            write_atomic(journal_path, json.dumps(journal).encode())
            reencoded.update(shard_reencoded)
            report.bad += shard_bad
            entries.append(ShardEntry(f"{name}.tar", f"{name}.idx", len(written), size))
            report.shards_written += 1
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    dropped = dict(listing.dropped)
    if report.bad:
        dropped["corrupt image"] = dropped.get("corrupt image", 0) + len(report.bad)
    if report.bad:
        rows = ["shard\tkey\tsource\treason"] + ["\t".join(b) for b in report.bad]
        write_atomic(report_path, ("\n".join(rows) + "\n").encode())
    elif report_path.exists():
        report_path.unlink()
    if not any(e.num_samples for e in entries):
        raise InputError(f"split '{split}' of {dataset}: no image could be written ({dropped}); "
                         f"see {report_path}")  # fmt: skip
    info = SplitInfo(
        dataset=dataset,
        split=split,
        classes=list(listing.classes),
        num_samples=sum(e.num_samples for e in entries),
        shards=entries,
        has_ignore=listing.has_ignore,
        positives=stats.positives.tolist(),
        ignored=stats.ignored.tolist(),
        cooccurrence=stats.cooccurrence.tolist(),
        labels_per_image=stats.labels_per_image(),
        dropped=dropped,
        reencoded=dict(reencoded),
        source={"conventions": listing.conventions, **(source or {})},
        plan=plan,
        image_check=options.check,
    )
    info.save(report.json_path)
    plan_path.unlink()
    report.info = info
    return report
