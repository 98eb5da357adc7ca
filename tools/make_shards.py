#!/usr/bin/env python
"""Turn a multi-label benchmark in its raw layout into WebDataset tar shards with DALI indexes.

    python tools/make_shards.py --data digits                       # embedded, needs no download
    python tools/make_shards.py --data voc2007 --root ~/data/VOCdevkit --workers 8
    python tools/make_shards.py --data voc2012 --root ~/data/VOCdevkit --train-aug-list train_aug.txt
    python tools/make_shards.py --data mscoco --root ~/data/coco --max-side 640
    python tools/make_shards.py --data openimages --root ~/data/oi --out s3://bucket/shards --workers 16
    python tools/make_shards.py --verify shards/mscoco [--repair]   # check shards made by any tool

Writes shards/NAME/SPLIT-000000.tar (+ .idx) and shards/NAME/SPLIT.json; with --out s3://BUCKET/PREFIX
they are built in a local staging folder and uploaded (shards, then indexes, then SPLIT.json, so a
reader never sees a split that is not all there; AWS credentials from the environment).

Annotation problems stop the run before any image is read; missing images stop it unless --skip-missing;
corrupt images are skipped, counted and listed in SPLIT.skipped.tsv. Re-running resumes: complete shards
are kept.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from fastmlic import __version__
from fastmlic.datasets import DATASETS, SplitListing, get_reader
from fastmlic.errors import InputError, MissingInput, UserError, refused_location
from fastmlic.shards.build import ImageOptions, SplitReport, WriteOptions, build_split
from fastmlic.shards.storage import ObjectMissing, is_url, join, open_store
from fastmlic.shards.verify import record_checked, repair, report_lines, verify


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=DATASETS, help="which benchmark to convert")
    p.add_argument(
        "--verify",
        type=Path,
        metavar="DIR",
        help="instead: check the shards in DIR (made by any tool), listing bad members",
    )
    p.add_argument("--repair", action="store_true", help="with --verify: rewrite shards without bad samples")
    p.add_argument("--root", type=Path, help="raw dataset folder (not needed for digits)")
    p.add_argument("--out", default="shards",
                   help="output folder or s3://BUCKET/PREFIX; shards go to OUT/DATA/")  # fmt: skip
    p.add_argument("--stage", type=Path, metavar="DIR",
                   help="with --out s3://: build here before uploading, and keep it (a rerun resumes); "
                        "default: a temporary folder, removed after the upload")  # fmt: skip
    p.add_argument("--splits", nargs="+", help="only these splits (default: all of the dataset's splits)")
    p.add_argument("--workers", type=int, default=1, help="processes that read, check and re-encode images")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--max-side", type=int, help="downsize images whose longer side exceeds this (re-encodes)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images")
    p.add_argument(
        "--check",
        choices=["decode", "structure"],
        default="decode",
        help="decode every image (safe for DALI) or only walk the JPEG markers (faster, for trusted data)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="shuffle seed for the training split (and digits content)"
    )
    p.add_argument(
        "--skip-missing", action="store_true", help="drop and count missing images instead of stopping"
    )
    p.add_argument("--overwrite", action="store_true", help="rewrite shards made with other settings")
    g = p.add_argument_group("digits")
    g.add_argument("--digits-size", type=int, default=96, help="image side of the composed digits images")
    g.add_argument("--digits-train", type=int, default=10_000, help="training images")
    g.add_argument("--digits-val", type=int, default=2_000, help="validation images")
    g = p.add_argument_group("voc2007, voc2012")
    g.add_argument("--difficult", choices=["ignore", "positive"], default="ignore",
                   help="a class seen only as difficult objects: ignore (default) or positive (Puzzle-CAM)")
    g.add_argument("--train-aug-list", type=Path, metavar="FILE",
                   help="voc2012: ids of the train_aug split (default: looked for in ImageSets/Segmentation, "
                        "then ImageSets/Main)")  # fmt: skip
    g = p.add_argument_group("openimages")
    g.add_argument("--machine-labels", type=float, metavar="CONF",
                   help="also count machine-generated labels with Confidence >= CONF as positives where no "
                        "human verified the class (default: human-verified labels only)")  # fmt: skip
    args = p.parse_args(argv)
    if args.verify is not None:
        if args.data is not None:
            p.error("--verify checks existing shards; it takes no --data")
        if not args.verify.is_dir():
            p.error(f"--verify {args.verify}: no such folder")
        return args
    if args.data is None:
        p.error("--data is required (or --verify DIR)")
    if is_url(args.out) and not args.out.startswith("s3://"):
        p.error(f"--out {args.out}: shards are written to a folder or to s3://BUCKET/PREFIX, not over http")
    if args.stage is not None and not is_url(args.out):
        p.error("--stage goes with --out s3://...")
    if args.repair:
        p.error("--repair goes with --verify")
    reader = get_reader(args.data)
    if reader.NEEDS_ROOT and args.root is None:
        p.error(f"--root is required for --data {args.data}")
    if args.root is not None and not args.root.is_dir():
        p.error(f"--root {args.root}: no such folder")
    unknown = set(args.splits or []) - set(reader.SPLITS)
    if unknown:
        p.error(
            f"--splits: {', '.join(sorted(unknown))} not in {args.data}'s splits {', '.join(reader.SPLITS)}"
        )
    if args.shard_size < 1 or args.workers < 1:
        p.error("--shard-size and --workers must be at least 1")
    return args


def reader_options(reader, args: argparse.Namespace, function: str = "list_split") -> dict:
    """The command-line options that the reader's function takes (`difficult`, `train_aug_list`, ...)."""
    accepted = inspect.signature(getattr(reader, function)).parameters
    return {k: v for k, v in vars(args).items() if k in accepted and k not in ("root", "split")}


def list_splits(args: argparse.Namespace) -> dict[str, SplitListing]:
    reader = get_reader(args.data)
    listings = {}
    default = reader.default_splits(args.root, **reader_options(reader, args, "default_splits")) \
        if hasattr(reader, "default_splits") else reader.SPLITS  # fmt: skip
    for split in args.splits or default:
        if args.data == "digits":
            size = args.digits_train if split == "train" else args.digits_val
            listings[split] = reader.list_split(
                None, split, seed=args.seed, size=args.digits_size, num_samples=size
            )
        else:
            listings[split] = reader.list_split(args.root, split, **reader_options(reader, args))
    return listings


def drop_missing_images(listings: dict[str, SplitListing], skip: bool) -> None:
    """Stop on missing image files (listing the first few), or drop and count them with --skip-missing."""
    missing = {
        split: [s for s in lst.samples if isinstance(s.image, Path) and not s.image.is_file()]
        for split, lst in listings.items()
    }
    total = sum(len(m) for m in missing.values())
    if not total:
        return
    first = [str(s.image) for m in missing.values() for s in m][:10]
    if not skip:
        raise MissingInput(
            f"{total} images are missing:\n  "
            + "\n  ".join(first)
            + (f"\n  ... and {total - len(first)} more" if total > len(first) else "")
            + "\npass --skip-missing to write the shards without them"
        )
    for split, lst in listings.items():
        gone = {s.key for s in missing[split]}
        if gone:
            lst.samples = [s for s in lst.samples if s.key not in gone]
            lst.dropped["missing image"] = len(gone)


def shared_images(listings: dict[str, SplitListing]) -> list[str]:
    """A line for each pair of splits that hold some of the same images (an evaluation split that shares
    images with a training split measures memory, not generalisation)."""
    keys = {split: {s.key for s in lst.samples} for split, lst in listings.items()}
    names = list(keys)
    return [f"splits {a} and {b} share {len(keys[a] & keys[b])} images" for i, a in enumerate(names)
            for b in names[i + 1 :] if keys[a] & keys[b]]  # fmt: skip


def summary(reports: list[SplitReport], out_dir: Path | str, seconds: float, shared: list[str] = ()) -> str:
    lines = [
        f"{'split':<10}{'samples':>9}{'shards':>8}{'reused':>8}{'MB':>9}{'classes':>9}  dropped / re-encoded"
    ]
    total_bytes = total_samples = 0
    for r in reports:
        info = r.info
        mb = sum(s.bytes for s in info.shards) / 1e6
        total_bytes += mb
        total_samples += info.num_samples
        notes = ", ".join(
            f"{v} {k}"
            for k, v in {
                **info.dropped,
                **{f"re-encoded ({k})": v for k, v in info.reencoded.items()},
            }.items()
        )
        lines.append(
            f"{r.split:<10}{info.num_samples:>9}{len(info.shards):>8}{r.shards_reused:>8}{mb:>9.1f}"
            f"{info.num_classes:>9}  {notes or '-'}"
        )
    lines.append(
        f"{total_samples} samples, {total_bytes:.1f} MB in {seconds:.1f} s "
        f"({total_samples / max(seconds, 1e-9):.0f} samples/s, {total_bytes / max(seconds, 1e-9):.1f} MB/s)"
    )
    lines.append(f"outputs: {out_dir}/  ({', '.join(r.json_path.name for r in reports)})")
    lines += list(shared)
    for r in reports:
        if r.bad:
            report = join(out_dir, f"{r.split}.skipped.tsv")
            lines.append(f"{len(r.bad)} corrupt images skipped in '{r.split}': see {report}")
        if r.stray:
            shown = ", ".join(r.stray[:4]) + (f" and {len(r.stray) - 4} more" if len(r.stray) > 4 else "")
            lines.append(f"warning: {shown} in {out_dir} are not part of split '{r.split}' "
                         f"({r.json_path.name} does not list them; readers never see them): remove "
                         f"them")  # fmt: skip
    return "\n".join(lines)


def verify_shards(shard_dir: Path, fix: bool) -> int:
    """--verify: 0 when every shard is clean (or was repaired), 1 when bad members remain."""
    tars = sorted(shard_dir.glob("*.tar"))
    if not tars:
        print(f"error: {shard_dir}: no .tar shards", file=sys.stderr)
        return 2
    with tqdm(total=len(tars), unit="shard", desc=f"verify {shard_dir}", disable=None) as bar:
        bad, total = verify(shard_dir, progress=bar.update)
    print(f"{total} samples in {len(tars)} shards checked; {len(bad)} bad members")
    for line in report_lines(bad[:20]):
        print("  " + line)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more")
    marked = record_checked(shard_dir, bad)
    if marked:
        print(f"recorded as decode-checked (DALI reads them): {', '.join(marked)}")
    if not bad:
        return 0
    if not fix:
        print("rewrite these shards without the bad samples: python tools/make_shards.py --verify "
              f"{shard_dir} --repair")
        return 1
    try:
        rewritten = repair(shard_dir, bad)
    except (OSError, UserError) as e:  # an unwritable disk; a key another tool wrote that ours refuses
        print(f"error: repairing {shard_dir}: {e}", file=sys.stderr)
        return 1
    dropped = len({(b.shard, b.key) for b in bad if b.key != "*"})
    names = ", ".join(p.name for p in rewritten)
    print(f"rewrote {len(rewritten)} shards without {dropped} bad samples: {names}")
    truncated = sorted({b.shard for b in bad if b.key == "*"})
    if truncated:
        print(f"truncated tars kept their whole samples before the cut: {', '.join(truncated)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except OSError as e:  # a read-only or full --out: shards already finished stay whole (a rerun resumes)
        if (refused := refused_location(e)) is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.verify is not None:
        return verify_shards(args.verify, args.repair)
    started = time.perf_counter()
    try:
        listings = list_splits(args)
        drop_missing_images(listings, args.skip_missing)
    except (UserError, FileNotFoundError) as e:  # a bad annotation; a --root without the dataset's files
        print(f"error: {e}", file=sys.stderr)
        return 2
    reader = get_reader(args.data)
    remote = join(args.out, args.data) if is_url(args.out) else None
    stage = args.stage or (Path(tempfile.mkdtemp(prefix="fastmlic-stage-")) if remote else None)
    out_dir = (stage if remote else Path(args.out)) / args.data
    command = shlex.join(["python", "tools/make_shards.py", *(argv if argv is not None else sys.argv[1:])])
    source = {"root": str(args.root or ""), "command": command, "fastmlic": __version__}
    reports = []
    total = sum(len(lst.samples) for lst in listings.values())
    image = ImageOptions(args.max_side, args.quality, args.check)
    options = WriteOptions(args.shard_size, image, args.workers, args.overwrite)
    with tqdm(total=total, unit="img", desc=f"shards/{args.data}", disable=None) as bar:
        for split, listing in listings.items():
            # the first split of each dataset is its training split: shuffled once, here, so DALI and
            # webdataset can read shards sequentially; evaluation splits keep their listing order
            seed = args.seed if split == reader.SPLITS[0] else None
            try:
                reports.append(
                    build_split(listing, out_dir, split, dataset=args.data, options=options,
                                shuffle_seed=seed, source=source, progress=bar.update)
                )
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    if remote:
        try:
            upload(reports, out_dir, open_store(remote), args.overwrite)
        except UserError as e:  # what was uploaded stays unlisted; the staged shards let a rerun go on
            kept = f"\nthe built shards stay in {out_dir}" if args.stage else ""
            print(f"error: {e}{kept}", file=sys.stderr)
            return 2
        if args.stage is None:
            shutil.rmtree(stage, ignore_errors=True)
    print(summary(reports, remote or out_dir, time.perf_counter() - started, shared_images(listings)))
    return 0


def upload(reports: list[SplitReport], out_dir: Path, store, overwrite: bool) -> None:
    """Each split's files into `store` in the order that keeps readers safe: an old SPLIT.json goes first
    (its shards are about to be replaced), then the tars, their indexes, and the new SPLIT.json last."""
    names = [n for r in reports for e in r.info.shards for n in (e.tar, e.index)]
    total = sum((out_dir / n).stat().st_size for n in names)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {store.root}", disable=None) as bar:
        for r in reports:
            json_name = r.json_path.name
            try:
                old = json.loads(store.read(json_name))
            except ObjectMissing:
                old = None
            if old is not None:
                if old.get("plan") != r.info.plan and not overwrite:
                    raise InputError(f"{store.url(json_name)} describes shards made with other settings; "
                                     f"pass --overwrite to replace them")  # fmt: skip
                store.delete(json_name)
            for entry in r.info.shards:
                for name in (entry.tar, entry.index):
                    store.upload(out_dir / name, name)
                    bar.update((out_dir / name).stat().st_size)
            store.upload(r.json_path, json_name)
            skipped = out_dir / f"{r.split}.skipped.tsv"  # the images left out, for the record
            if skipped.is_file():
                store.upload(skipped, skipped.name)


if __name__ == "__main__":
    sys.exit(main())
