"""The DALI backend: one graph that decodes and augments on the GPU (`mixed` decode) or, with
`device_id=None`, in DALI's CPU mode.

reader (index files, this rank's part, shuffle buffer in training)
 -> decode (fused with the random crop window when one is configured: the decoder skips the pixels
    the crop throws away) -> resize to the square -> RandAugment on the resized image (cheaper than
    on the source) -> flip + normalise + cast in one crop_mirror_normalize, HWC so the PyTorch view
    is channels-last without a copy. Cutout runs on the batch afterwards (`batch.cutout_`), the
    same code as the PyTorch backend.

With V views (a recipe's data request) the image is decoded once and the graph branches after the
decode into V chains of the random ops (crop, RandAugment, flip), each drawing its own randomness; a
random crop then runs as its own op on the decoded image instead of inside the decoder.

DALI cannot skip an undecodable image: the pipeline stops, and some corrupt JPEGs crash the process
in the decoder instead. So a shard is read only when its images were decoded once before (make_shards
does it while writing, `make_shards --verify` for shards from elsewhere; SPLIT.json records it with
each tar's size, time and CRC) and it has not changed since; a small unrecorded or changed shard is
checked here first. Any other failure is turned into an error that names
the bad members and the command that repairs them.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from pathlib import Path

import torch

from ..config import DataConfig
from ..shards.format import IGNORE_EXT, IMAGE_EXT, LABEL_EXT, ShardEntry, SplitInfo, split_json_path
from ..shards.storage import is_url
from ..shards.verify import changed_shards, check_shard
from .batch import DataError, LoaderBase, LoaderSpec, nhwc_to_channels_last

READER = "Reader"
SCAN_LIMIT_BYTES = 2 << 30  # check an unchecked split, or look for a failure's culprit, up to this size


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _graph(info: SplitInfo, root: Path, cfg: DataConfig, train: bool, rank: int, world_size: int, gpu: bool,
           views: int):  # fmt: skip
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug import rand_augment

    exts = [IMAGE_EXT, LABEL_EXT] + ([IGNORE_EXT] if info.has_ignore else [])
    outputs = fn.readers.webdataset(
        paths=[str(p) for p in info.shard_paths(root)],
        index_paths=[str(p) for p in info.index_paths(root)],
        ext=exts,
        dtypes=[types.UINT8] * len(exts),  # labels are raw bytes: no decoder op
        missing_component_behavior="error",
        shard_id=rank,  # the global rank: the local one would give every node the same samples
        num_shards=world_size,
        pad_last_batch=True,  # every rank yields the same number of batches
        random_shuffle=train,
        initial_fill=cfg.shuffle_buffer,
        name=READER,
    )
    jpegs = outputs[0]
    # "path:offset:name" per sample, zero-padded to the batch's longest so the output is dense
    source = fn.pad(fn.get_property(jpegs, key="source_info"))
    decode = "mixed" if gpu else "cpu"
    size = cfg.image_size
    crop = dict(random_area=list(cfg.crop_scale), random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10)
    random_crop = train and cfg.resize == "random_resized_crop"
    crop_per_view = random_crop and views > 1  # else one crop (fused with decode) or none at all
    long_side = train and cfg.resize == "long_side"
    # the window of an image_size square, padded with the mean colour where the image is smaller
    pad = dict(crop=[size, size], out_of_bounds_policy="pad", fill_values=[round(m * 255) for m in cfg.mean])
    if random_crop and not crop_per_view:  # the decoder skips the pixels the crop throws away
        decoded = fn.decoders.image_random_crop(jpegs, device=decode, output_type=types.RGB, **crop)
    else:
        decoded = fn.decoders.image(jpegs, device=decode, output_type=types.RGB)
    if not train and cfg.eval_resize == "pad":  # unscaled, at the top-left
        resized = fn.crop(decoded, crop_pos_x=0.0, crop_pos_y=0.0, **pad)
    elif long_side:  # a random longer side for each image, bicubic; each view crops it on its own
        longer = fn.random.uniform(values=[float(n) for n in range(cfg.long_side[0], cfg.long_side[1] + 1)])
        scaled = fn.resize(decoded, resize_longer=longer, interp_type=types.INTERP_CUBIC, antialias=True)
    elif not crop_per_view:  # squash (as the field does) or the fused crop: one resize serves every view
        resized = fn.resize(decoded, resize_x=size, resize_y=size, antialias=True)
    images = []
    for _ in range(views):  # one decode, `views` independently drawn augmentation branches
        if long_side:
            view = fn.crop(scaled, crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                           crop_pos_y=fn.random.uniform(range=[0.0, 1.0]), **pad)  # fmt: skip
        elif crop_per_view:
            view = fn.random_resized_crop(decoded, size=[size, size], **crop)
        else:
            view = resized
        if train and cfg.randaugment_n > 0:
            # nearest-neighbour warps, as torchvision's RandAugment (the PyTorch backend): DALI's default,
            # linear, made its CPU RandAugment 2.3x slower (benchmarks/dali_randaugment.py)
            view = rand_augment.rand_augment(view, n=cfg.randaugment_n, m=cfg.randaugment_m,
                                             num_magnitude_bins=31, shape=[size, size],
                                             interp_type=types.INTERP_NN)  # fmt: skip
        mirror = fn.random.coin_flip(probability=0.5) if train and cfg.hflip else 0
        images.append(fn.crop_mirror_normalize(
            view,
            dtype=types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT,
            output_layout="HWC",
            mean=[m * 255 for m in cfg.mean],
            std=[s * 255 for s in cfg.std],
            mirror=mirror,
        ))  # fmt: skip
    return (*images, source, *outputs[1:])


@contextlib.contextmanager
def _quiet_dali_deprecations():
    """DALI 2.4's RandAugment uses deprecated operator aliases at every build, and DALI re-enables
    the warning filter around its own `warn` call; so drop those messages where they are shown."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def filtered(message, category, filename, lineno, file=None, line=None):
            if not (issubclass(category, DeprecationWarning) and "nvidia.dali" in str(message)):
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = filtered
        yield


class DaliLoader(LoaderBase):
    """Iterable of `Batch`; `len()` is the number of batches per epoch on this rank. DALI never skips
    an image, so `skipped` stays empty; it reshuffles and rotates shards by itself each epoch."""

    backend = "dali"

    def __init__(self, spec: LoaderSpec):
        super().__init__(spec)
        self._require_checked_images()
        self._build()

    def _build(self, checkpoint: str | None = None) -> None:
        """The pipeline and its iterator; restored from a DALI checkpoint when one is given (its
        readers' positions, shuffle buffers and random generators: the next batch is the one the
        checkpointed pipeline would have given). Training pipelines track their state for that."""
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        gpu = self.device.type == "cuda"
        device_id = (
            (self.device.index if self.device.index is not None else torch.cuda.current_device())
            if gpu
            else None
        )
        graph = pipeline_def(_graph, enable_conditionals=True)  # RandAugment selects ops with `if`
        with _quiet_dali_deprecations(), self._explained():  # the iterator reads the first batch already
            self.pipe = graph(
                self.shard_info,
                self.root,
                self.cfg,
                self.train,
                self.rank,
                self.world_size,
                gpu,
                self.views,
                batch_size=self.cfg.batch_size,
                num_threads=max(1, self.cfg.workers),
                device_id=device_id,
                seed=self.seed * 1_000_003 + self.rank,
                enable_checkpointing=self.train,
                checkpoint=checkpoint,
            )
            self.pipe.build()
            self.view_names = [f"view{v}" for v in range(self.views)]
            ignore = ["ignore"] if self.shard_info.has_ignore else []
            names = [*self.view_names, "source", "targets", *ignore]
            self.iterator = DALIGenericIterator(
                [self.pipe],
                names,
                reader_name=READER,
                auto_reset=True,
                # training fills the last batch (a few repeats, full steps); evaluation never repeats
                last_batch_policy=LastBatchPolicy.FILL if self.train else LastBatchPolicy.PARTIAL,
            )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "dali": self.iterator.checkpoints()[0]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        del self.iterator, self.pipe  # its threads and buffers go before the restored pipeline's come
        self._build(state["dali"])

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self):
        it = iter(self.iterator)
        while True:
            try:
                out = next(it)[0]
            except StopIteration:
                return
            except RuntimeError as e:
                raise self._explain(e) from None
            keys = [_key(row) for row in out["source"].cpu().numpy()]
            views = [nhwc_to_channels_last(out[name]) for name in self.view_names]
            yield self._finish(views, out["targets"], out.get("ignore"), keys)

    @contextlib.contextmanager
    def _explained(self):
        try:
            yield
        except RuntimeError as e:
            # a half-built pipeline is not kept: its threads are stopped when it is freed, here, and not
            # by a garbage collection in a process forked later (a DataLoader worker), where it hangs
            self.pipe = self.iterator = None
            raise self._explain(e) from None

    def _require_checked_images(self) -> None:
        """Read only shards whose images decoded once: those a recorded check saw, as they were then.
        Others (never checked, only structure-checked, or changed since) are decoded here first when
        they are small enough, else refused with the command that checks them."""
        info = self.shard_info
        if is_url(self.root):  # nothing to stat or re-read there: the record travels with the upload
            if info.image_check != "decode":
                raise DataError(
                    f"{split_json_path(self.root, info.split)}: the images of split {info.split!r} are not "
                    f"known to decode, and DALI's decoder can crash the process on a corrupt JPEG. Check a "
                    f"local copy (python tools/make_shards.py --verify DIR) and upload it again, or use "
                    f"--data.backend=torch, which skips unreadable samples"
                )
            return
        unchecked = changed_shards(info, self.root)
        if not unchecked:
            return
        if info.image_check == "decode":
            names = ", ".join(e.tar for e in unchecked[:3]) + (", ..." if len(unchecked) > 3 else "")
            why = f"{len(unchecked)} of its shards changed since their images were checked ({names})"
        elif info.image_check == "structure":
            why = "only their JPEG structure was checked"
        else:
            why = "no check is recorded"
        verify = f"python tools/make_shards.py --verify {self.root}"
        json_path = split_json_path(self.root, info.split)
        if sum(e.bytes for e in unchecked) > SCAN_LIMIT_BYTES:
            raise DataError(
                f"{json_path}: the images of split {info.split!r} are not known to decode ({why}), and "
                f"DALI's decoder can crash the process on a corrupt JPEG. Check them once (the result is "
                f"recorded there): {verify}; or use --data.backend=torch, which skips unreadable samples"
            )
        started = time.perf_counter()
        bad = self._bad_members(unchecked)
        if bad:
            lines = [f"split {info.split!r} ({self.root}) has samples DALI cannot read ({why}):", *bad,
                     f"remove them with: {verify} --repair (a truncated tar keeps its whole samples before "
                     f"the cut; a stale index is written again); or use --data.backend=torch, which skips "
                     f"unreadable samples"]  # fmt: skip
            raise DataError("\n".join(lines))
        count = sum(e.num_samples for e in unchecked)
        warnings.warn(
            f"split {info.split!r} ({self.root}): {why}, so {count} images were decoded before DALI reads "
            f"them ({time.perf_counter() - started:.1f} s), all readable; record the check with: {verify}",
            stacklevel=3,
        )

    def _bad_members(self, entries: list[ShardEntry] | None = None) -> list[str]:
        """The unreadable members of `entries` (default: every shard of the split), one line each (at
        most 10 and a count)."""
        shards = self.shard_info
        entries = shards.shards if entries is None else entries
        bad = [b for e in entries for b in check_shard(self.root / e.tar, shards.num_classes)[0]]
        lines = [f"  {b.describe()}" for b in bad[:10]]
        if len(bad) > 10:
            lines.append(f"  ... and {len(bad) - 10} more")
        return lines

    def _explain(self, error: RuntimeError) -> DataError:
        """DALI's message says which operator failed (with its traceback into our graph) and then, after
        'encountered:', why; only the why is kept, then the members our own check finds."""
        text = str(error)
        op = re.search(r"operator `nvidia\.dali\.fn\.([\w.]+)`", text)
        reason = text.split("encountered:", 1)[-1]
        reason = next((ln.strip() for ln in reason.splitlines() if ln.strip() and "Critical error" not in ln),
                      text.strip().splitlines()[0])  # fmt: skip
        reason = re.sub(r'^Assert on ".*?" failed: ', "", reason)
        shards = self.shard_info
        where = f"in {op.group(1)} " if op else ""
        lines = [f"DALI stopped {where}reading split {shards.split!r} ({self.root}): {reason}"]
        if sum(s.bytes for s in shards.shards) <= SCAN_LIMIT_BYTES and not is_url(self.root):
            lines += self._bad_members()
        lines.append(
            f"DALI cannot skip an unreadable sample; list and remove them with: python tools/make_shards.py "
            f"--verify {self.root} --repair (a truncated tar keeps its whole samples before the cut)"
        )
        return DataError("\n".join(lines))


def _key(source_row) -> str:
    """'path/shard.tar:offset:KEY.jpg' (zero-padded bytes) -> 'KEY'."""
    text = bytes(source_row).rstrip(b"\0").decode()
    return text.rsplit(":", 1)[-1].split(".", 1)[0]
