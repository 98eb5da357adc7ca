"""The PyTorch backend: DataLoader workers decode with Pillow and augment with torchvision v2.

It is the fallback where DALI has no wheels (macOS, Windows, ARM) and the baseline our benchmark
beats. Samples are read through the shard index, so DDP partitions samples, not shards, exactly as
DALI's reader does: evaluation gives every rank a contiguous block (each sample once across ranks),
and training deals one seeded permutation round-robin, padded so every rank gets the same number of
samples and no rank waits in a collective at the end of an epoch.

Augmentation is seeded per (seed, epoch, sample): a run repeats exactly whatever the worker count,
and a resumed run sees the same images as an uninterrupted one.
"""

from __future__ import annotations

import gc
import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..preemption import ignore_interrupts
from ..shards.format import IGNORE_EXT, IMAGE_EXT, LABEL_EXT, SplitInfo
from ..shards.storage import is_url
from ..shards.verify import changed_shards, index_problem
from .batch import DataError, LoaderBase, LoaderSpec, normalize_uint8
from .index import BadSample, ShardIndex

MAX_REDRAWS = 16  # training replaces an unreadable sample by another; this many in a row is an error


def rank_block(num_samples: int, rank: int, world_size: int) -> range:
    """The contiguous block of samples a rank evaluates; DALI's reader uses the same formula."""
    return range(num_samples * rank // world_size, num_samples * (rank + 1) // world_size)


class EvalSampler(Sampler):
    def __init__(self, num_samples: int, rank: int, world_size: int):
        self.block = rank_block(num_samples, rank, world_size)
        self.epoch = 0

    def __iter__(self):
        return ((i, self.epoch) for i in self.block)

    def __len__(self) -> int:
        return len(self.block)


class TrainSampler(Sampler):
    """A permutation per epoch, the same on every rank (seeded by seed and epoch), padded by
    wrapping so every rank gets the same number of full batches, and dealt round-robin. Full batches,
    as DALI's reader fills its last one: a last training batch of one image would stop the run in
    BatchNorm. `start` skips this rank's first samples of the epoch (a resumed epoch)."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, batch_size: int = 1):
        self.num_samples, self.rank, self.world_size, self.seed = num_samples, rank, world_size, seed
        self.per_rank = math.ceil(math.ceil(num_samples / world_size) / batch_size) * batch_size
        self.epoch = self.start = 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.num_samples))[:total]  # a tiny split wraps more than once
        return ((i, self.epoch) for i in order[self.rank :: self.world_size][self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def mean_colour(cfg: DataConfig) -> list[int]:
    """The uint8 colour that normalises to (about) zero: what padding fills with."""
    return [round(m * 255) for m in cfg.mean]


class LongSideCrop:
    """A random longer side in [low, high] (aspect kept, bicubic), then a random `size` x `size` window:
    a random crop where the image is larger, the image at a random place where it is smaller, the rest
    `fill` (Puzzle-CAM's RandomResize and RandomCrop, tools/ai/augment_utils.py). Draws from torch's
    generator, as the v2 transforms do."""

    def __init__(self, low: int, high: int, size: int, fill: list[int]):
        self.low, self.high, self.size, self.fill = low, high, size, fill

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        h, w = image.shape[-2:]
        scale = int(torch.randint(self.low, self.high + 1, ())) / max(h, w)
        h, w = round(h * scale), round(w * scale)
        image = TF.resize(image, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
        canvas = torch.tensor(self.fill, dtype=image.dtype).view(-1, 1, 1).repeat(1, self.size, self.size)
        (dst_x, src_x), (dst_y, src_y) = (self._offsets(n) for n in (w, h))  # x first, as the original
        ch, cw = min(self.size, h), min(self.size, w)
        canvas[:, dst_y : dst_y + ch, dst_x : dst_x + cw] = image[:, src_y : src_y + ch, src_x : src_x + cw]
        return canvas

    def _offsets(self, n: int) -> tuple[int, int]:
        """(where the image starts on the canvas, where the window starts on the image) along one side."""
        space = n - self.size
        if space > 0:
            return 0, int(torch.randint(0, space + 1, ()))
        return int(torch.randint(0, -space + 1, ())), 0


def top_left_pad(image: torch.Tensor, size: int, fill: list[int]) -> torch.Tensor:
    """The image as it is at the top-left of a `size` x `size` canvas of `fill`, cropped where larger
    (OASS's evaluation: Top_Left_Crop)."""
    canvas = torch.tensor(fill, dtype=image.dtype).view(-1, 1, 1).repeat(1, size, size)
    h, w = min(size, image.shape[-2]), min(size, image.shape[-1])
    canvas[:, :h, :w] = image[:, :h, :w]
    return canvas


def image_transform(cfg: DataConfig, train: bool):
    """uint8 CHW -> uint8 CHW at image_size x image_size, with the training augmentations (a v2.Compose)."""
    from functools import partial

    from torchvision.transforms import v2  # not at import: torchvision takes seconds (--help loads this)

    size = (cfg.image_size, cfg.image_size)
    if not train:
        if cfg.eval_resize == "pad":
            return v2.Compose([partial(top_left_pad, size=cfg.image_size, fill=mean_colour(cfg))])
        return v2.Compose([v2.Resize(size, antialias=True)])
    if cfg.resize == "random_resized_crop":
        steps = [v2.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), antialias=True)]
    elif cfg.resize == "long_side":
        steps = [LongSideCrop(*cfg.long_side, cfg.image_size, mean_colour(cfg))]
    else:
        steps = [v2.Resize(size, antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.randaugment_n > 0:  # after the resize: augmenting the small image is the cheap order
        steps.append(v2.RandAugment(cfg.randaugment_n, cfg.randaugment_m, num_magnitude_bins=31))
    return v2.Compose(steps)


class ShardDataset(Dataset):
    """Index (sample, epoch) -> ([HWC uint8 image per view] or None, labels, ignore, key, skipped
    samples). The image is decoded once and augmented `views` times, each view with its own seed. A
    sample that cannot be read (undecodable image, a member cut short by a truncated tar, a label of
    the wrong length) is skipped and reported as (shard, key, reason)."""

    def __init__(self, index: ShardIndex, cfg: DataConfig, train: bool, seed: int, views: int = 1):
        self.index, self.train, self.seed, self.views = index, train, seed, views
        self.transform = image_transform(cfg, train)
        # a whole-image resize can decode at reduced size; a crop or a pad wants the full resolution
        squash = cfg.resize == "squash" if train else cfg.eval_resize == "squash"
        self.draft_size = (cfg.image_size, cfg.image_size) if squash else None
        self.num_classes = index.info.num_classes

    def __len__(self) -> int:
        return len(self.index)

    def _decode(self, i: int, data: bytes) -> torch.Tensor:
        """uint8 CHW RGB (grayscale and CMYK converted)."""
        member = f"{self.index.refs[i].key}.{IMAGE_EXT}"
        try:
            with Image.open(io.BytesIO(data)) as im:
                if self.draft_size:  # DCT-domain downscale, never below the output size
                    im.draft("RGB", self.draft_size)
                rgb = np.array(im.convert("RGB"))  # writable: torch tensors must be
        except UnidentifiedImageError:
            raise BadSample(f"{member} is not a JPEG or any image format Pillow knows") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise BadSample(f"{member} cannot be decoded: {str(e) or type(e).__name__}") from None
        return torch.from_numpy(rgb).permute(2, 0, 1)

    def _labels(self, i: int, ext: str, data: bytes) -> np.ndarray:
        row = np.frombuffer(data, dtype=np.uint8)
        member = f"{self.index.refs[i].key}.{ext}"
        if row.size != self.num_classes:
            raise BadSample(f"{member} has {row.size} bytes; the split has {self.num_classes} classes")
        if row.max(initial=0) > 1:
            raise BadSample(f"{member} holds values other than 0 and 1")
        return row

    def _read(self, i: int) -> tuple:
        has_ignore = self.index.info.has_ignore
        members = self.index.read_members(i, (IMAGE_EXT, LABEL_EXT, IGNORE_EXT) if has_ignore else
                                          (IMAGE_EXT, LABEL_EXT))  # fmt: skip
        image = self._decode(i, members[IMAGE_EXT])
        labels = self._labels(i, LABEL_EXT, members[LABEL_EXT])
        ignore = self._labels(i, IGNORE_EXT, members[IGNORE_EXT]) if has_ignore else None
        return image, labels, ignore

    def __getitem__(self, item: tuple[int, int]):
        i, epoch = item
        skipped = []
        for attempt in range(MAX_REDRAWS):
            try:
                image, labels, ignore = self._read(i)
                break
            except BadSample as e:
                ref = self.index.refs[i]
                skipped.append((self.index.tars[ref.shard], ref.key, str(e)))
                if not self.train:  # evaluation leaves it out: no stand-in may enter the metrics
                    return None, None, None, ref.key, skipped
                # training keeps the batch full (equal step counts on every rank) with another image
                i = (i + 7919 * (attempt + 1)) % len(self.index)
        else:
            raise DataError(
                f"{MAX_REDRAWS} unreadable samples in a row ({skipped[-1][0]}: {skipped[-1][2]}); "
                f"check the shards with: python tools/make_shards.py --verify {Path(skipped[-1][0]).parent}"
            )
        views = []
        for view in range(self.views):
            with _sample_rng(self.seed, epoch, i, view):
                views.append(self.transform(image).permute(1, 2, 0))
        return views, labels, ignore, self.index.refs[i].key, skipped


def _require_current_indexes(info: SplitInfo, root: Path) -> None:
    """Samples are read where the index says; a tar rewritten after its index would give other bytes
    (labels of another length among them). Only shards not known unchanged since their check are read
    for this, and only their headers: less than the CRC a touched tar would otherwise be read for."""
    if is_url(root):  # SplitInfo.load compared every remote tar's size with the one written
        return
    changed = changed_shards(info, root, by_content=False)
    stale = [f"  {e.tar}: {why}" for e in changed if (why := index_problem(root / e.tar))]
    if stale:
        head = f"split {info.split!r} ({root}): {len(stale)} shards do not match their index (.idx):"
        fix = f"write the indexes again with: python tools/make_shards.py --verify {root} --repair"
        raise DataError("\n".join([head, *stale[:10], fix]))


class _sample_rng:
    """Seed torch's global generator per sample and view (the v2 transforms draw from it); in the main
    process (workers=0) the previous state is restored so model-side randomness is untouched. View 0
    keeps the seed a one-view loader uses, so asking for more views leaves the first one unchanged."""

    VIEW_STRIDE = 0x9E3779B97F4A7C15  # a large odd constant: views' seeds land far apart

    def __init__(self, seed: int, epoch: int, index: int, view: int = 0):
        self.value = (seed * 1_000_003 + epoch) * 100_000_007 + index + view * self.VIEW_STRIDE
        self.in_main = torch.utils.data.get_worker_info() is None

    def __enter__(self):
        if self.in_main:
            self.saved = torch.get_rng_state()
        torch.manual_seed(self.value % (2**63))

    def __exit__(self, *exc):
        if self.in_main:
            torch.set_rng_state(self.saved)


def collate(samples: list) -> dict:
    skipped = [s for sample in samples for s in sample[4]]
    good = [s for s in samples if s[0] is not None]
    if not good:
        return {"views": None, "targets": None, "ignore": None, "keys": [], "skipped": skipped}
    return {
        "views": [torch.stack([s[0][v] for s in good]) for v in range(len(good[0][0]))],
        "targets": torch.from_numpy(np.stack([s[1] for s in good])),
        "ignore": torch.from_numpy(np.stack([s[2] for s in good])) if good[0][2] is not None else None,
        "keys": [s[3] for s in good],
        "skipped": skipped,
    }


class TorchLoader(LoaderBase):
    """Iterable of `Batch`; `len()` is the number of batches per epoch on this rank."""

    backend = "torch"

    def __init__(self, spec: LoaderSpec):
        super().__init__(spec)
        cfg = spec.cfg
        index = ShardIndex(spec.info, spec.root)
        _require_current_indexes(spec.info, spec.root)
        if spec.train:
            self.sampler = TrainSampler(len(index), spec.rank, spec.world_size, spec.seed, cfg.batch_size)
        else:
            self.sampler = EvalSampler(len(index), spec.rank, spec.world_size)
        self.loader = DataLoader(
            ShardDataset(index, cfg, spec.train, spec.seed, spec.views),
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.workers > 0,
            prefetch_factor=4 if cfg.workers > 0 else None,
            worker_init_fn=ignore_interrupts,  # Ctrl-C is the main process's to handle: save, then stop
        )

        self.batches_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.sampler.epoch = epoch
        if self.train:
            self.sampler.start = 0

    def load_state_dict(self, state: dict) -> None:
        """Augmentation is drawn per (seed, epoch, sample), so skipping the samples already trained on
        is all an exact resume needs."""
        super().load_state_dict(state)
        self.sampler.epoch, self.sampler.start = self.epoch, self.position * self.cfg.batch_size

    def __iter__(self):
        if self.cfg.workers > 0:
            # workers are forked from this process: garbage that owns threads (a DALI pipeline left in a
            # reference cycle by an error) must be freed here first, else a worker's own collection
            # runs its finalizer, which waits forever for threads the fork did not copy
            gc.collect()
        for raw in self.loader:
            self._note_skipped(raw["skipped"])
            if not raw["keys"]:
                continue  # evaluation only: every image of this batch was undecodable
            views = [self._normalize(v) for v in raw["views"]]
            yield self._finish(views, raw["targets"], raw["ignore"], raw["keys"])

    def _normalize(self, nhwc_uint8: torch.Tensor) -> torch.Tensor:
        on_device = nhwc_uint8.to(self.device, non_blocking=True)
        return normalize_uint8(on_device, self.cfg.mean, self.cfg.std, self.dtype)

    def _note_skipped(self, skipped: list) -> None:
        for shard, key, reason in skipped:
            if len(self.skipped) < 10:
                warnings.warn(f"{shard}: skipped sample {key} ({reason})", stacklevel=3)
            self.skipped.append((shard, key, reason))
