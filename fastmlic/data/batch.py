"""The batch both loaders yield, and the per-batch tensor work they share (normalise, Cutout).

Normalisation and Cutout run on whole batches on the training device: one vectorised op instead of
per-image work in CPU workers, and the same code, so both backends give the same semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float, channels-last memory (NHWC)
    targets: torch.Tensor  # [B, C] float multi-hot
    ignore: torch.Tensor | None  # [B, C] bool, True = leave this class out of the metrics; None if none
    keys: list[str]  # sample keys, so predictions from every rank can be matched to their labels

    def __len__(self) -> int:
        return len(self.keys)


def nhwc_to_channels_last(nhwc: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] contiguous -> [B, 3, H, W] view whose memory is NHWC: a permute, no copy."""
    return nhwc.permute(0, 3, 1, 2)


def normalize_uint8(
    nhwc: torch.Tensor, mean: list[float], std: list[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W] in channels-last memory."""
    mean_t = torch.tensor([m * 255 for m in mean], device=nhwc.device)
    inv_std = torch.tensor([1 / (s * 255) for s in std], device=nhwc.device)
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
    mean_t = torch.tensor(mean, device=dev)
    std_t = torch.tensor(std, device=dev)
    fill = ((rand[:, 2:5] - mean_t) / std_t).to(images.dtype)[:, None, None, :]  # [B, 1, 1, 3]
    nhwc = images.permute(0, 2, 3, 1)  # a view of the same memory
    nhwc.copy_(torch.where(mask, fill, nhwc))
    return images


class LoaderBase:
    """What both backends share: epoch bookkeeping and the last per-batch step on the device
    (cast, Cutout, targets to float), so the two yield identical `Batch`es."""

    backend = ""

    def __init__(self, info, cfg, *, train: bool, rank: int, device: torch.device, seed: int):
        self.info, self.cfg, self.train, self.device = info, cfg, train, torch.device(device)
        self.dtype = IMAGE_DTYPES[cfg.dtype]
        self.cutout_seed = seed * 1_000_003 + rank
        self.cutout_rng = torch.Generator(self.device).manual_seed(self.cutout_seed)
        self.skipped: list[tuple[str, str, str]] = []  # (shard, key, reason) of every skipped image
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.cutout_rng.manual_seed(self.cutout_seed * 10_007 + epoch)  # Cutout follows the epoch

    def _finish(self, images, targets, ignore, keys: list[str]) -> Batch:
        if images.device != self.device:
            images = images.to(self.device, non_blocking=True)
        if images.dtype != self.dtype:
            images = images.to(self.dtype)
        if self.train and self.cfg.cutout > 0:
            cutout_(images, self.cfg.cutout, self.cfg.mean, self.cfg.std, self.cutout_rng)
        return Batch(
            images=images,
            targets=targets.to(self.device, non_blocking=True).float(),
            ignore=ignore.to(self.device, non_blocking=True).bool() if ignore is not None else None,
            keys=keys,
        )


class DataError(RuntimeError):
    """The input cannot be read; the message names the shard and sample and what to run."""
