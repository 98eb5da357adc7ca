"""make_shards --verify / --repair on shard sets with planted bad members."""

import importlib.util
import shutil
import subprocess

import numpy as np
import pytest
import rawdata
import webdataset as wds
from conftest import ROOT

from fastmlic.shards.format import SplitInfo, decode_multi_hot, fingerprint
from fastmlic.shards.verify import changed_shards, repair, verify
from fastmlic.shards.writer import ShardSample, read_labels, write_shard

spec = importlib.util.spec_from_file_location("make_shards", ROOT / "tools" / "make_shards.py")
make_shards = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_shards)


def foreign_shard(path, rng, bad: dict[str, bytes]):
    """A shard as another tool would write it: good samples plus the given bad images."""
    samples = [ShardSample(f"good{i}", (("jpg", rawdata.image_bytes(rng)), ("cls", b"3"))) for i in range(4)]
    samples += [ShardSample(key, (("jpg", data), ("cls", b"1"))) for key, data in bad.items()]
    write_shard(path, samples)


def test_verify_lists_bad_members_by_shard_and_key_and_repair_drops_them(tmp_path, rng):
    bad = {
        "truncated": rawdata.corrupt_jpeg(rng),
        "garbage": bytes(rng.integers(0, 256, 500, np.uint8)),
        "empty": b"",
    }
    foreign_shard(tmp_path / "a-000000.tar", rng, bad)
    foreign_shard(tmp_path / "a-000001.tar", rng, {})
    found, total = verify(tmp_path)
    assert total == 11
    assert {(b.shard, b.key) for b in found} == {("a-000000.tar", k) for k in bad}
    repair(tmp_path, found)
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "a-000000.tar"), shardshuffle=False)]
    assert keys == [f"good{i}" for i in range(4)]
    assert verify(tmp_path) == ([], 8)
    wds2idx = shutil.which("wds2idx", path=str(ROOT / ".venv" / "bin")) or shutil.which("wds2idx")
    if wds2idx:  # the rewritten index is what DALI's own tool would write
        subprocess.run([wds2idx, str(tmp_path / "a-000000.tar"), str(tmp_path / "ref.idx")], check=True,
                       capture_output=True)  # fmt: skip
        assert (tmp_path / "ref.idx").read_text() == (tmp_path / "a-000000.idx").read_text()


def small_digits(out, train: int, val: int, shard_size: int):
    """digits shards of 32 px images written by make_shards; returns their folder."""
    args = ["--data", "digits", "--out", str(out), "--digits-train", str(train), "--digits-val", str(val),
            "--digits-size", "32", "--shard-size", str(shard_size)]  # fmt: skip
    assert make_shards.main(args) == 0
    return out / "digits"


def test_repair_updates_split_json_counts_and_label_statistics(tmp_path, rng):
    shard_dir = small_digits(tmp_path, 30, 12, 5)
    before = SplitInfo.load(shard_dir / "val.json")
    # corrupt one image and one label file in shard 1, as a disk or copy error would
    tar = shard_dir / "val-000001.tar"
    samples = [list(m) for m in read_labels(tar).items()]
    rewritten, victim = [], None
    for key, members in samples:
        jpg = next(s for s in wds.WebDataset(str(tar), shardshuffle=False) if s["__key__"] == key)["jpg"]
        if victim is None:
            victim, jpg = key, jpg[:100]
        rewritten.append(ShardSample(key, (("jpg", jpg), ("lbl", members["lbl"]))))
    rewritten[1] = ShardSample(rewritten[1].key, (rewritten[1].members[0], ("lbl", b"\x01\x00")))
    write_shard(tar, rewritten)

    assert make_shards.main(["--verify", str(shard_dir)]) == 1  # found, not repaired
    found, _ = verify(shard_dir)
    assert {b.key for b in found} == {victim, rewritten[1].key}
    assert any("expected 10 bytes" in b.reason for b in found)
    assert make_shards.main(["--verify", str(shard_dir), "--repair"]) == 0
    after = SplitInfo.load(shard_dir / "val.json")
    assert after.num_samples == before.num_samples - 2
    assert after.dropped == {"corrupt image": 2}
    positives = np.zeros(10, int)
    for t in after.shard_paths(shard_dir):
        for members in read_labels(t).values():
            positives += decode_multi_hot(members["lbl"], 10)
    assert (
        after.positives == positives.tolist()
        and sum(e.num_samples for e in after.shards) == after.num_samples
    )
    assert make_shards.main(["--verify", str(shard_dir)]) == 0


def test_repair_keeps_a_truncated_tars_whole_samples_and_verify_records_the_decode_check(tmp_path, capsys):
    shard_dir = small_digits(tmp_path, 10, 20, 10)
    info = SplitInfo.load(shard_dir / "val.json")
    assert info.image_check == "decode"  # make_shards decoded every image it wrote
    info.image_check = ""  # as shards from elsewhere (or an older make_shards) are
    info.save(shard_dir / "val.json")
    tar = shard_dir / "val-000001.tar"
    whole = list(read_labels(tar))
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size * 6 // 10])  # a copy cut short
    capsys.readouterr()
    assert make_shards.main(["--verify", str(shard_dir)]) == 1
    out = capsys.readouterr().out
    assert "val-000001.tar\t*\tthe tar ends early, after" in out and f"--verify {shard_dir} --repair" in out
    assert "recorded as decode-checked (DALI reads them): train" in out  # the clean split only
    assert SplitInfo.load(shard_dir / "val.json").image_check == ""
    assert make_shards.main(["--verify", str(shard_dir), "--repair"]) == 0
    assert "truncated tars kept their whole samples before the cut: val-000001.tar" in capsys.readouterr().out
    after = SplitInfo.load(shard_dir / "val.json")
    kept = list(read_labels(tar))
    assert 0 < len(kept) < 10 and kept == whole[: len(kept)]  # the samples before the cut, in order
    assert after.num_samples == 10 + len(kept) and after.dropped == {"truncated tar": 10 - len(kept)}
    assert after.image_check == "decode" and verify(shard_dir) == ([], 20 + len(kept))


def test_make_shards_and_verify_record_each_checked_tar_and_repair_writes_a_stale_index_again(tmp_path):
    shard_dir = small_digits(tmp_path, 10, 20, 10)
    info = SplitInfo.load(shard_dir / "val.json")
    for entry in info.shards:  # what the check saw, so a loader can tell a tar changed since
        assert entry.checked == fingerprint(shard_dir / entry.tar)
    assert changed_shards(info, shard_dir) == []
    tar = shard_dir / "val-000001.tar"
    samples = [ShardSample(s["__key__"], (("jpg", s["jpg"]), ("lbl", s["lbl"])))
               for s in wds.WebDataset(str(tar), shardshuffle=False)]  # fmt: skip
    staging = tmp_path / "staging"
    staging.mkdir()
    write_shard(staging / tar.name, samples[::-1])  # the same samples in another order, the old index kept
    (staging / tar.name).replace(tar)
    assert [e.tar for e in changed_shards(info, shard_dir)] == ["val-000001.tar"]
    found, _ = verify(shard_dir)
    assert [(b.shard, b.member) for b in found] == [("val-000001.tar", "val-000001.idx")]
    assert "it is stale" in found[0].reason
    assert make_shards.main(["--verify", str(shard_dir), "--repair"]) == 0
    after = SplitInfo.load(shard_dir / "val.json")
    assert after.num_samples == 20 and "corrupt image" not in after.dropped  # nothing was lost
    assert verify(shard_dir) == ([], 30) and changed_shards(after, shard_dir) == []


def test_make_shards_into_an_unwritable_out_is_one_line_naming_it(unwritable, capsys):
    args = ["--data", "digits", "--out", str(unwritable), "--digits-train", "10", "--digits-val", "10"]
    assert make_shards.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {unwritable}") and "Traceback" not in err


def test_verify_arguments(tmp_path):
    assert make_shards.main(["--verify", str(tmp_path)]) == 2  # no shards there
    with pytest.raises(SystemExit):
        make_shards.main(["--verify", str(tmp_path), "--data", "digits"])
    with pytest.raises(SystemExit):
        make_shards.main(["--data", "digits", "--repair"])


def test_keys_with_folders_stay_apart_and_unwritable_keys_fail_cleanly(tmp_path, rng):
    import io
    import tarfile

    good, bad = rawdata.image_bytes(rng), rawdata.corrupt_jpeg(rng)
    with tarfile.open(tmp_path / "f-000000.tar", "w") as tf:  # another tool's layout: folders in keys
        for name, data in [("a/x.jpg", good), ("b/x.jpg", bad), ("a/x.cls", b"1"), ("b/x.cls", b"2")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    found, total = verify(tmp_path)
    assert total == 2 and [(b.key, b.member) for b in found] == [("b/x", "b/x.jpg")]
    with pytest.raises(ValueError, match="may only contain"):
        repair(tmp_path, found)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f-000000.tar"]  # no temporary left behind
