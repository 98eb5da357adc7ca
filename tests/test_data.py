"""Both data backends on small shard sets: the batch contract, DDP coverage, augmentation, bad images."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import rawdata
import torch

from fastmlic.config import DataConfig
from fastmlic.data import DataError, build_loader, resolve_backend
from fastmlic.data.batch import cutout_
from fastmlic.data.dali_loader import dali_available
from fastmlic.shards.format import ShardEntry, SplitInfo, fingerprint, read_index, shard_name
from fastmlic.shards.writer import ShardSample, write_shard

BACKENDS = [
    "torch",
    pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI is not installed")),
]
C = 6


def make_split(root, rng, n=37, shard_size=8, has_ignore=True, bad=None, split="val", image_check="decode",
               labels=None):  # fmt: skip
    """n samples of ragged sizes (one grayscale, one CMYK JPEG) in shards of `shard_size`; `bad` maps
    sample positions to image bytes planted instead, `labels` to label bytes. `image_check` is what
    SPLIT.json records (by default, falsely for planted bad images, that they were decode-checked, with
    each tar's fingerprint as a check records it). Returns {key: (labels, ignore)}."""
    bad, labels_bytes = bad or {}, labels
    truth, entries, samples = {}, [], []
    for i in range(n):
        key = f"s{i:03d}"
        mode = {3: "L", 5: "CMYK"}.get(i, "RGB")
        size = (int(rng.integers(20, 70)), int(rng.integers(20, 70)))
        image = bad.get(i) or rawdata.image_bytes(rng, size, mode=mode)
        labels = (rng.random(C) < 0.4).astype(np.uint8)
        ignore = (rng.random(C) < 0.2).astype(np.uint8)
        members = [("jpg", image), ("lbl", (labels_bytes or {}).get(i, labels.tobytes()))] + (
            [("ign", ignore.tobytes())] if has_ignore else []
        )
        samples.append(ShardSample(key, tuple(members)))
        truth[key] = (labels, ignore)
    for s in range(0, n, shard_size):
        name = shard_name(split, s // shard_size)
        size = write_shard(root / f"{name}.tar", samples[s : s + shard_size])
        checked = fingerprint(root / f"{name}.tar") if image_check == "decode" else {}
        count = len(samples[s : s + shard_size])
        entries.append(ShardEntry(f"{name}.tar", f"{name}.idx", count, size, checked))
    info = SplitInfo(
        dataset="t",
        split=split,
        classes=[f"c{c}" for c in range(C)],
        num_samples=n,
        shards=entries,
        has_ignore=has_ignore,
        positives=[0] * C,
        ignored=[0] * C,
        cooccurrence=[[0] * C] * C,
        labels_per_image={},
        image_check=image_check,
    )
    info.save(root / f"{split}.json")
    return truth


def cfg_for(backend, **kw):
    base = dict(
        image_size=32,
        batch_size=8,
        workers=2,
        backend=backend,
        randaugment_n=2,
        randaugment_m=9,
        cutout=0.5,
        hflip=True,
    )
    return DataConfig(**{**base, **kw})


def epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_follow_the_contract_and_carry_the_written_labels(tmp_path, rng, backend):
    truth = make_split(tmp_path, rng)
    for dtype, torch_dtype in [("float32", torch.float32), ("bfloat16", torch.bfloat16)]:
        loader = build_loader(tmp_path / "val.json", cfg_for(backend, dtype=dtype), train=False)
        assert loader.backend == backend
        batches = epoch(loader)
        assert len(batches) == len(loader) == 5
        for b in batches:
            assert b.images.shape == (len(b), 3, 32, 32) and b.images.dtype == torch_dtype
            assert b.images.is_contiguous(memory_format=torch.channels_last)
            assert b.images.permute(0, 2, 3, 1).is_contiguous()  # NHWC memory, not a copy of NCHW
            assert b.targets.dtype == torch.float32 and b.ignore.dtype == torch.bool
            for key, t, ign in zip(b.keys, b.targets, b.ignore, strict=True):
                np.testing.assert_array_equal(t.numpy(), truth[key][0])
                np.testing.assert_array_equal(ign.numpy(), truth[key][1].astype(bool))
        assert sorted(k for b in batches for k in b.keys) == sorted(truth)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_and_cmyk_jpegs_come_out_as_rgb(tmp_path, rng, backend):
    make_split(tmp_path, rng, n=8, has_ignore=False)
    cfg = cfg_for(backend, mean=[0, 0, 0], std=[1, 1, 1])
    images = {
        k: img
        for b in epoch(build_loader(tmp_path / "val.json", cfg, train=False))
        for k, img in zip(b.keys, b.images, strict=True)
    }
    gray = images["s003"]
    torch.testing.assert_close(gray[0], gray[1], atol=2 / 255, rtol=0)
    torch.testing.assert_close(gray[0], gray[2], atol=2 / 255, rtol=0)
    assert not torch.allclose(images["s000"][0], images["s000"][1], atol=0.05)
    assert images["s005"].shape == (3, 32, 32)  # CMYK


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_size", [2, 3])
def test_two_simulated_ranks_evaluate_every_sample_exactly_once(tmp_path, rng, backend, world_size):
    truth = make_split(tmp_path, rng)  # 37 samples: no world size or batch size divides it
    seen, eval_lens, train_lens = [], set(), set()
    for rank in range(world_size):
        loader = build_loader(
            tmp_path / "val.json", cfg_for(backend), train=False, rank=rank, world_size=world_size
        )
        eval_lens.add(len(loader))
        seen += [k for b in epoch(loader) for k in b.keys]
        train = build_loader(
            tmp_path / "val.json", cfg_for(backend), train=True, rank=rank, world_size=world_size
        )
        batches = epoch(train, 1)
        assert len(batches) == len(train)
        train_lens.add(len(train))
    assert sorted(seen) == sorted(truth)
    assert len(train_lens) == 1  # equal steps per epoch on every rank: no rank waits in a collective
    assert len(eval_lens) == 1


def test_torch_training_epochs_partition_the_data_between_ranks(tmp_path, rng):
    truth = make_split(tmp_path, rng)
    per_rank = []
    for rank in range(2):
        loader = build_loader(tmp_path / "val.json", cfg_for("torch"), train=True, rank=rank, world_size=2)
        per_rank.append([k for b in epoch(loader, 3) for k in b.keys])
    # 37 samples, batches of 8: padded by wrapping to 3 full batches a rank, as DALI fills its last one
    assert len(per_rank[0]) == len(per_rank[1]) == 24
    assert set(per_rank[0]) | set(per_rank[1]) == set(truth)
    assert len(per_rank[0][:19] + per_rank[1][:18]) == len(set(per_rank[0][:19] + per_rank[1][:18])) == 37


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_changes_training_images_and_evaluation_is_deterministic(tmp_path, rng, backend):
    make_split(tmp_path, rng, n=16, has_ignore=False)
    cfg = cfg_for(backend, cutout=0.0)  # RandAugment and flips alone must differ between epochs

    def by_key(loader, e):
        return {k: img.clone() for b in epoch(loader, e) for k, img in zip(b.keys, b.images, strict=True)}

    evaluation = build_loader(tmp_path / "val.json", cfg, train=False)
    first, second = by_key(evaluation, 0), by_key(evaluation, 1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    training = build_loader(tmp_path / "val.json", cfg, train=True)
    aug0, aug1 = by_key(training, 0), by_key(training, 1)
    changed = [k for k in first if not torch.allclose(aug0[k], first[k], atol=1e-3)]
    assert len(changed) == len(first)
    assert sum(not torch.equal(aug0[k], aug1[k]) for k in first) == len(first)


def test_torch_augmentation_repeats_for_a_seed_whatever_the_worker_count(tmp_path, rng):
    make_split(tmp_path, rng, n=16, has_ignore=False)
    runs = []
    for workers in (0, 2):
        loader = build_loader(tmp_path / "val.json", cfg_for("torch", workers=workers), train=True, seed=5)
        runs.append([(b.keys, b.images) for b in epoch(loader, 2)])
    for (keys_a, img_a), (keys_b, img_b) in zip(*runs, strict=True):
        assert keys_a == keys_b
        torch.testing.assert_close(img_a, img_b, rtol=0, atol=0)


def test_torch_backend_skips_and_counts_corrupt_jpegs(tmp_path, rng):
    bad = {4: rawdata.corrupt_jpeg(rng), 20: bytes(rng.integers(0, 256, 300, np.uint8))}
    truth = make_split(tmp_path, rng, bad=bad)
    with pytest.warns(UserWarning, match=r"val-000000.tar: skipped sample s004 \(s004.jpg cannot be decoded"):
        loader = build_loader(tmp_path / "val.json", cfg_for("torch"), train=False)
        keys = [k for b in epoch(loader) for k in b.keys]
    assert sorted(keys) == sorted(set(truth) - {"s004", "s020"})
    assert sorted(k for _, k, _ in loader.skipped) == ["s004", "s020"]
    with pytest.warns(UserWarning, match="skipped sample"):
        train = build_loader(tmp_path / "val.json", cfg_for("torch"), train=True)
        batches = epoch(train)
    # 37 samples in full batches of 8, stand-ins where an image is unreadable
    assert len(batches) == len(train) and sum(len(b) for b in batches) == 40
    assert {k for _, k, _ in train.skipped} == {"s004", "s020"}
    assert not {"s004", "s020"} & {k for b in batches for k in b.keys}


def truncate(tar, keep=0.5):
    data = tar.read_bytes()
    tar.write_bytes(data[: int(len(data) * keep)])


def test_torch_backend_skips_members_of_a_truncated_tar_and_labels_of_the_wrong_length(tmp_path, rng):
    truth = make_split(tmp_path, rng, n=16, has_ignore=False, labels={2: b"\x01\x00\x01"})
    truncate(tmp_path / "val-000001.tar")  # the second shard's members past its middle are gone
    loader = build_loader(tmp_path / "val.json", cfg_for("torch", workers=2), train=False)
    with pytest.warns(UserWarning) as caught:
        keys = [k for b in epoch(loader) for k in b.keys]
    skipped = {k: (shard, reason) for shard, k, reason in loader.skipped}
    assert "s002" in skipped and "s002.lbl has 3 bytes; the split has 6 classes" in skipped["s002"][1]
    cut = {k for k in skipped if k != "s002"}
    assert cut and all(int(k[1:]) >= 8 for k in cut)
    assert all(skipped[k][0].endswith("val-000001.tar") and "cut short" in skipped[k][1] for k in cut)
    assert sorted(keys) == sorted(set(truth) - set(skipped))
    assert any("val-000000.tar: skipped sample s002" in str(w.message) for w in caught)
    train = build_loader(tmp_path / "val.json", cfg_for("torch", workers=0), train=True)
    with pytest.warns(UserWarning, match="skipped sample"):
        batches = epoch(train)
    assert sum(len(b) for b in batches) == 16 and not set(skipped) & {k for b in batches for k in b.keys}


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
@pytest.mark.parametrize("check", ["", "structure"])
def test_dali_decodes_an_unchecked_split_first_and_names_what_it_cannot_read(tmp_path, rng, check):
    make_split(tmp_path, rng, n=16, has_ignore=False, bad={11: rawdata.corrupt_jpeg(rng)}, image_check=check)
    with pytest.raises(DataError) as error:  # before DALI's decoder ever sees the corrupt JPEG
        build_loader(tmp_path / "val.json", cfg_for("dali"), train=False)
    assert "val-000001.tar: s011.jpg: cannot be decoded" in str(error.value)
    assert f"--verify {tmp_path} --repair" in str(error.value)
    make_split(tmp_path, rng, n=16, has_ignore=False, image_check=check)  # clean: read, with a warning
    with pytest.warns(UserWarning, match=f"16 images were decoded before DALI .* --verify {tmp_path}"):
        loader = build_loader(tmp_path / "val.json", cfg_for("dali"), train=False)
    assert sum(len(b) for b in epoch(loader)) == 16


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_dali_failure_in_the_first_batch_is_explained_with_the_member_and_the_repair_command(tmp_path, rng):
    # SPLIT.json says the images were checked, but a sample of the first batch (which DALI's iterator
    # reads while it is built) is garbage: the failure comes from DALI itself
    make_split(tmp_path, rng, n=16, has_ignore=False, bad={3: bytes(rng.integers(0, 256, 300, np.uint8))})
    with pytest.raises(DataError) as error:
        build_loader(tmp_path / "val.json", cfg_for("dali"), train=False)
    text = str(error.value)
    assert text.startswith("DALI stopped in decoders.image reading split 'val'")
    assert "val-000000.tar: s003.jpg: not a JPEG or any image format Pillow knows" in text
    assert f"--verify {tmp_path} --repair" in text and "Critical error" not in text and "BytesIO" not in text


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_dali_on_a_tar_truncated_after_its_check_names_it_and_the_repair_that_keeps_its_whole_samples(
        tmp_path, rng):  # fmt: skip
    make_split(tmp_path, rng, n=16, has_ignore=False)
    truncate(tmp_path / "val-000000.tar")
    with pytest.raises(DataError) as error:  # found before DALI reads it: the tar is not the one checked
        build_loader(tmp_path / "val.json", cfg_for("dali"), train=False)
    text = str(error.value)
    assert "1 of its shards changed since their images were checked (val-000000.tar)" in text
    assert "val-000000.tar: the tar ends early, after" in text
    assert f"--verify {tmp_path} --repair (a truncated tar keeps its whole samples" in text


def corrupt_in_place(tar, key, rng):
    """Overwrite the start of `key`'s JPEG after its SOI marker with random bytes: the tar keeps its
    size and its index stays right, as after bit rot or a bad copy."""
    offset, size = next(m["jpg"] for k, m in read_index(tar.with_suffix(".idx")) if k == key)
    with open(tar, "r+b") as f:
        f.seek(offset + 2)
        f.write(bytes(rng.integers(0, 256, min(size - 2, 200), np.uint8)))


DALI_READ = """
import sys
from fastmlic.config import DataConfig
from fastmlic.data import DataError, build_loader
try:
    cfg = DataConfig(image_size=32, batch_size=8, workers=2, backend="dali")
    loader = build_loader(sys.argv[1], cfg, train=False)
    print(sum(len(b) for b in loader), "images")
except DataError as e:
    sys.exit(f"error: {e}")
"""


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_dali_checks_a_shard_changed_in_place_after_its_check_again_instead_of_crashing(tmp_path, rng):
    make_split(tmp_path, rng, n=16, has_ignore=False)
    tar = tmp_path / "val-000001.tar"
    size = tar.stat().st_size
    corrupt_in_place(tar, "s010", rng)
    assert tar.stat().st_size == size
    # in a process of its own: DALI's decoder fed this JPEG can end the process by a signal
    run = subprocess.run([sys.executable, "-c", DALI_READ, str(tmp_path / "val.json")], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 of its shards changed since their images were checked (val-000001.tar)" in run.stderr
    assert "val-000001.tar: s010.jpg:" in run.stderr and f"--verify {tmp_path} --repair" in run.stderr


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_a_shard_touched_or_copied_with_the_same_bytes_is_not_checked_again(tmp_path, rng, recwarn):
    make_split(tmp_path, rng, n=16, has_ignore=False)
    os.utime(tmp_path / "val-000000.tar", ns=(1, 1))  # a copy that did not keep the times
    loader = build_loader(tmp_path / "val.json", cfg_for("dali"), train=False)
    assert sum(len(b) for b in epoch(loader)) == 16
    assert not [w for w in recwarn if "decoded before DALI" in str(w.message)]


def rewrite_without_index(tar, samples):
    """`tar` written again with `samples` while its old index stays: a stale index."""
    staging = tar.parent / "staging"
    staging.mkdir()
    write_shard(staging / tar.name, samples)
    (staging / tar.name).replace(tar)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stale_index_over_labels_of_another_length_is_refused_on_both_backends(tmp_path, rng, backend):
    make_split(tmp_path, rng, n=16, has_ignore=False)
    tar = tmp_path / "val-000001.tar"
    # the second shard written again with 7-byte labels (a split of 6 classes), its old index kept: both
    # backends read where the index says, which is no longer where the members are
    image = rawdata.image_bytes(rng, (30, 30))
    samples = [ShardSample(f"s{i:03d}", (("jpg", image), ("lbl", bytes(7)))) for i in range(8, 16)]
    rewrite_without_index(tar, samples)
    with pytest.raises(DataError) as error:
        build_loader(tmp_path / "val.json", cfg_for(backend), train=False)
    text = str(error.value)
    assert "val-000001.tar: " in text and "the index places sample s008 at" in text and "it is stale" in text
    assert f"--verify {tmp_path} --repair" in text


def test_a_missing_shard_fails_at_start_with_its_path(tmp_path, rng):
    make_split(tmp_path, rng, n=16)
    (tmp_path / "val-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="val-000001.tar"):
        build_loader(tmp_path / "val.json", cfg_for("torch"), train=False)


def test_auto_backend_and_an_unavailable_dali(monkeypatch):
    assert resolve_backend("torch") == "torch"
    if dali_available():  # on every device: DALI's CPU pipeline is the faster one too
        assert resolve_backend("auto") == "dali"
    monkeypatch.setattr("fastmlic.data.dali_available", lambda: False)
    assert resolve_backend("auto") == "torch"
    with pytest.raises(DataError, match="backend=torch"):
        resolve_backend("dali")


def test_cutout_fills_one_clipped_square_per_image_with_one_colour():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(64, 3, 20, 20).to(memory_format=torch.channels_last)
    cutout_(images, 0.5, mean=[0.5] * 3, std=[0.5] * 3, generator=g)
    assert images.is_contiguous(memory_format=torch.channels_last)
    changed = (images != 0).any(1)  # [B, H, W]
    area = changed.flatten(1).sum(1)
    assert (area > 0).all() and (area <= 100).all()  # at most (0.5 * 20)^2, less where clipped
    assert (area < 100).any()  # some squares reach past the border
    for img, mask in zip(images, changed, strict=True):
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert mask.sum() == len(rows) * len(cols)  # one rectangle
        colour = img[:, mask]
        assert (colour == colour[:, :1]).all()  # one colour
        assert ((colour >= -1) & (colour <= 1)).all()  # a pixel colour, normalised like the image


@pytest.mark.parametrize("resize", ["squash", "random_resized_crop"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_views_are_augmented_independently_and_share_keys_and_targets(tmp_path, rng, backend, resize):
    truth = make_split(tmp_path, rng, n=16)
    cfg = cfg_for(backend, resize=resize, cutout=0.0)  # RandAugment, flips and crops alone must differ
    loader = build_loader(tmp_path / "val.json", cfg, train=True, views=3)
    batches = epoch(loader)
    assert sorted(k for b in batches for k in b.keys) == sorted(truth)
    for b in batches:
        assert len(b.views) == 3 and b.images is b.views[0]
        for view in b.views:
            assert view.shape == (len(b), 3, 32, 32) and view.is_contiguous(memory_format=torch.channels_last)
        for key, t in zip(b.keys, b.targets, strict=True):  # one target row per image, for every view
            np.testing.assert_array_equal(t.numpy(), truth[key][0])
        for i in range(len(b)):  # every view of every image drew its own augmentation
            pairs = [(0, 1), (0, 2), (1, 2)]
            differ = [not torch.allclose(b.views[p][i], b.views[q][i], atol=1e-3) for p, q in pairs]
            assert all(differ), b.keys[i]
    with pytest.raises(ValueError, match="evaluation takes 1"):
        build_loader(tmp_path / "val.json", cfg, train=False, views=2)


def test_torch_view_zero_is_the_image_a_one_view_loader_gives(tmp_path, rng):
    make_split(tmp_path, rng, n=16, has_ignore=False)
    cfg = cfg_for("torch", cutout=0.5)  # Cutout draws for view 0 first: the same squares as one view
    one, two = (build_loader(tmp_path / "val.json", cfg, train=True, views=v) for v in (1, 2))
    for a, b in zip(epoch(one, 3), epoch(two, 3), strict=True):
        assert a.keys == b.keys
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_class_subset_restricts_targets_ignore_and_the_description(tmp_path, rng, backend):
    truth = make_split(tmp_path, rng)
    loader = build_loader(tmp_path / "val.json", cfg_for(backend), train=False, classes=["c4", "c1"])
    assert loader.info.classes == ["c4", "c1"] and loader.info.num_classes == 2
    assert loader.shard_info.num_classes == C
    seen = 0
    for b in epoch(loader):
        assert b.targets.shape == b.ignore.shape == (len(b), 2)
        for key, t, ign in zip(b.keys, b.targets, b.ignore, strict=True):
            np.testing.assert_array_equal(t.numpy(), truth[key][0][[4, 1]])
            np.testing.assert_array_equal(ign.numpy(), truth[key][1][[4, 1]].astype(bool))
            seen += 1
    assert seen == len(truth)  # a subset keeps every image, also those with none of its classes
    with pytest.raises(ValueError, match=r"val.json: class subset names 1 classes .*'cc3' \(did you mean"):
        build_loader(tmp_path / "val.json", cfg_for(backend), train=False, classes=["c1", "cc3"])


def test_split_description_of_a_class_subset():
    info = SplitInfo(dataset="t", split="train", classes=["a", "b", "c"], num_samples=10, shards=[],
                     has_ignore=True, positives=[5, 3, 4], ignored=[1, 0, 2],
                     cooccurrence=[[5, 2, 1], [2, 3, 0], [1, 0, 4]],
                     labels_per_image={"mean": 1.2})  # fmt: skip
    sub, columns = info.subset(["c", "a"], "train.json")
    assert columns == [2, 0] and sub.classes == ["c", "a"]
    assert sub.positives == [4, 5] and sub.ignored == [2, 1]
    assert sub.cooccurrence == [[4, 1], [1, 5]]
    assert sub.labels_per_image == {"mean": 0.9} and sub.source["class_subset"] == "2 of 3 classes"
    assert info.classes == ["a", "b", "c"]  # the full description is untouched
