"""The batch both loaders yield, and the per-batch tensor work they share (normalise, Cutout).

Normalisation and Cutout run on whole batches on the training device: one vectorised op instead of
per-image work in CPU workers, and the same code, so both backends give the same semantics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataConfig
from ..errors import InputError
from ..shards.format import SplitInfo

IMAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Batch:
    views: list[torch.Tensor]  # V views of the same images, each [B, 3, H, W] float, channels-last memory
    targets: torch.Tensor  # [B, C] float multi-hot (the same for every view)
    ignore: torch.Tensor | None  # [B, C] bool, True = leave this class out of the metrics; None if none
    keys: list[str]  # sample keys, so predictions from every rank can be matched to their labels

    @property
    def images(self) -> torch.Tensor:
        """View 0: the only view unless a recipe asked for more."""
        return self.views[0]

    def __len__(self) -> int:
        return len(self.keys)


def nhwc_to_channels_last(nhwc: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] contiguous -> [B, 3, H, W] view whose memory is NHWC: a permute, no copy."""
    return nhwc.permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A small constant tensor on `device`, made once: building it from a list copies from the host and
    waits for the GPU, which every batch would otherwise pay (a host sync in the step's stream)."""
    return torch.tensor(values, device=device)


def normalize_uint8(
    nhwc: torch.Tensor, mean: list[float], std: list[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W] in channels-last memory."""
    mean_t = _constant(tuple(m * 255 for m in mean), nhwc.device)
    inv_std = _constant(tuple(1 / (s * 255) for s in std), nhwc.device)
    out = (nhwc.float() - mean_t) * inv_std
    return nhwc_to_channels_last(out.to(dtype))


def cutout_(
    images: torch.Tensor, fraction: float, mean: list[float], std: list[float], generator: torch.Generator
) -> torch.Tensor:
    """Cutout as the ASL family applies it: per image one square of side `fraction * side`, centred
    anywhere (clipped at the border), filled with one random colour. Works in place on normalised
    channels-last images; the colour is drawn in pixel space and normalised like the image."""
    b, _, h, w = images.shape
    dev = images.device
    rand = torch.rand(b, 5, generator=generator, device=generator.device).to(dev)
    half_h, half_w = round(fraction * h) / 2, round(fraction * w) / 2
    cy, cx = rand[:, 0] * h, rand[:, 1] * w
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    in_rows = (rows >= (cy - half_h)[:, None]) & (rows < (cy + half_h)[:, None])  # [B, H]
    in_cols = (cols >= (cx - half_w)[:, None]) & (cols < (cx + half_w)[:, None])  # [B, W]
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[..., None]  # [B, H, W, 1]
    mean_t, std_t = _constant(tuple(mean), dev), _constant(tuple(std), dev)
    fill = ((rand[:, 2:5] - mean_t) / std_t).to(images.dtype)[:, None, None, :]  # [B, 1, 1, 3]
    nhwc = images.permute(0, 2, 3, 1)  # a view of the same memory
    nhwc.copy_(torch.where(mask, fill, nhwc))
    return images


@dataclass(frozen=True)
class LoaderSpec:
    """What one rank's loader of one split reads, and how: made once by `build_loader`, taken whole by
    either backend."""

    info: SplitInfo  # what the shards hold
    root: Path | str  # the folder of the split's shards, or their s3:// or http(s):// URL prefix
    cfg: DataConfig
    train: bool
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    seed: int = 0
    views: int = 1  # augmented views of each image, from one decode
    subset: tuple[SplitInfo, list[int]] | None = None  # a class subset: its description, its label columns


class LoaderBase:
    """What both backends share: epoch bookkeeping and the last per-batch step on the device
    (cast, Cutout, targets to float, the class subset's columns), so the two yield identical `Batch`es.

    A class subset (the restricted description and its classes' columns in the labels, from
    `SplitInfo.subset`) limits the classes: `info` then describes the subset, `shard_info` what the
    shards hold."""

    backend = ""

    def __init__(self, spec: LoaderSpec):
        self.spec, cfg = spec, spec.cfg
        self.shard_info, self.root, self.cfg, self.train = spec.info, spec.root, cfg, spec.train
        self.rank, self.world_size, self.seed, self.views = spec.rank, spec.world_size, spec.seed, spec.views
        self.device = torch.device(spec.device)
        self.info, columns = spec.subset if spec.subset is not None else (spec.info, None)
        # the subset's label columns where the targets are indexed: on the device (made once, here)
        self.columns = torch.tensor(columns, device=self.device) if columns is not None else None
        self.dtype = IMAGE_DTYPES[cfg.dtype]
        self.cutout_seed = spec.seed * 1_000_003 + spec.rank
        # one generator per view, so view 0 draws what a one-view loader draws
        self.cutout_rngs = [torch.Generator(self.device).manual_seed(self.cutout_seed)
                            for _ in range(self.views)]  # fmt: skip
        self.skipped: list[tuple[str, str, str]] = []  # (shard, key, reason) of every skipped image
        self.epoch = 0
        self.position = 0  # batches yielded in this epoch: where a resumed epoch starts

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        for view, rng in enumerate(self.cutout_rngs):  # Cutout follows the epoch
            rng.manual_seed(self.cutout_seed * 10_007 + epoch + view * 1_000_000_007)

    def state_dict(self) -> dict:
        """Where this rank's loader is: epoch, batches yielded, the Cutout generators (a backend adds
        its own state). Loading it makes the next batch the one an uninterrupted run would see."""
        return {"epoch": self.epoch, "position": self.position,
                "cutout": [rng.get_state() for rng in self.cutout_rngs]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        for rng, saved in zip(self.cutout_rngs, state["cutout"], strict=True):
            rng.set_state(saved)

    def _finish(self, views: list[torch.Tensor], targets, ignore, keys: list[str]) -> Batch:
        finished = []
        for images, rng in zip(views, self.cutout_rngs, strict=True):
            if images.device != self.device:
                images = images.to(self.device, non_blocking=True)
            if images.dtype != self.dtype:
                images = images.to(self.dtype)
            if self.train and self.cfg.cutout > 0:
                cutout_(images, self.cfg.cutout, self.cfg.mean, self.cfg.std, rng)
            finished.append(images)
        self.position += 1
        targets = targets.to(self.device, non_blocking=True)
        ignore = ignore.to(self.device, non_blocking=True) if ignore is not None else None
        if self.columns is not None:
            targets = targets[:, self.columns]
            ignore = ignore[:, self.columns] if ignore is not None else None
        return Batch(views=finished, targets=targets.float(), keys=keys,
                     ignore=ignore.bool() if ignore is not None else None)  # fmt: skip


class DataError(InputError):
    """The input cannot be read; the message names the shard and sample and what to run."""
