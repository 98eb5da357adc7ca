"""Batches from shards: `build_loader(split_json, cfg.data, train=..., rank=..., world_size=...)`.

Both backends yield `Batch` (V views of the images, each [B, 3, H, W] float in channels-last memory;
float multi-hot targets, the ignore mask where the split has one, sample keys), know their length and
take `set_epoch`. A class subset restricts targets, ignore mask and `loader.info` (classes, positives,
co-occurrence) to the named classes. This package imports no model, loss or kernel code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import DataConfig
from ..shards.format import SplitInfo, split_json_path
from ..shards.storage import is_url, join, split_location
from .batch import Batch, DataError, LoaderSpec
from .dali_loader import DaliLoader, dali_available
from .torch_loader import TorchLoader

__all__ = ["Batch", "DataError", "LoaderSpec", "build_loader", "resolve_backend", "split_json", "DaliLoader",
           "TorchLoader"]  # fmt: skip


def split_json(cfg: DataConfig, split: str) -> Path | str:
    """Where a split of the configured shard set is described: <shards>/<dataset>/<split>.json (a URL when
    data.shards is one)."""
    return split_json_path(join(cfg.shards, cfg.dataset), split)


def resolve_backend(name: str, shards: str | Path = "") -> str:
    """`auto` picks DALI wherever it is installed and can read the shards' location (folders and s3://,
    not http). On a CPU too: with nearest-neighbour warps its RandAugment pipeline ran 1.51x the PyTorch
    pipeline's images/s, and 1.73x without RandAugment (benchmarks/RESULTS.md, input pipeline, 2026-12-04)."""
    over_http = str(shards).startswith(("http://", "https://"))
    if name == "auto":
        return "dali" if dali_available() and not over_http else "torch"
    if name == "dali" and not dali_available():
        raise DataError(
            "data.backend=dali but NVIDIA DALI is not installed: pip install 'fastmlic[dali]' "
            "(Linux x86_64), or set --data.backend=torch"
        )
    if name == "dali" and over_http:
        raise DataError(
            f"data.backend=dali cannot read data.shards={shards}: DALI's readers take folders and s3:// "
            f"URLs, not http(s). Use --data.backend=torch (it reads http ranges), serve the shards from "
            f"S3 or an S3-compatible server, or copy them to a local folder"
        )
    return name


def build_loader(
    split_json: str | Path,
    cfg: DataConfig,
    *,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    views: int = 1,
    classes: list[str] | None = None,
) -> DaliLoader | TorchLoader:
    """The loader for one split on one rank: `views` augmented views of each image (training), and
    only `classes` (names; None: all) in targets, ignore mask and `loader.info`. Missing or unreadable
    shards and unknown class names fail here, with their path."""
    path = split_json if is_url(split_json) else Path(split_json)
    info = SplitInfo.load(path)  # on object storage: every listed object is there, at its size
    root = split_location(path)[0]
    if views < 1 or (views > 1 and not train):
        raise ValueError(f"views={views}: a training loader takes 1 or more views, evaluation takes 1")
    subset = info.subset(classes, str(path)) if classes is not None and classes != info.classes else None
    for tar in [] if is_url(root) else info.shard_paths(root):
        try:
            with open(tar, "rb") as f:
                f.read(512)
        except OSError as e:
            raise DataError(f"{tar}: cannot read shard ({e.strerror})") from None
    backend = resolve_backend(cfg.backend, root)
    spec = LoaderSpec(info, root, cfg, train, rank, world_size, torch.device(device), seed, views,
                      subset)  # fmt: skip
    return (DaliLoader if backend == "dali" else TorchLoader)(spec)
