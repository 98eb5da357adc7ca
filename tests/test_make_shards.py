"""tools/make_shards.py end to end on tiny raw trees: format, round trip, bad input, resume."""

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import rawdata
import webdataset as wds
from conftest import ROOT
from PIL import Image

from fastmlic.datasets import Sample, SplitListing
from fastmlic.shards.build import WriteOptions, build_split
from fastmlic.shards.format import SplitInfo, encode_multi_hot, split_json_path

spec = importlib.util.spec_from_file_location("make_shards", ROOT / "tools" / "make_shards.py")
make_shards = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_shards)

MAKERS = {
    "voc2007": rawdata.make_voc,
    "voc2012": rawdata.make_voc2012,
    "mscoco": rawdata.make_coco,
    "nuswide": rawdata.make_nuswide,
    "vg500": rawdata.make_vg500,
    "openimages": rawdata.make_openimages,
}


def read_back(shard_dir, split):
    """Every sample through plain webdataset: {key: (jpg bytes, lbl, ign or None)}."""
    info = SplitInfo.load(split_json_path(shard_dir, split))
    urls = [str(p) for p in info.shard_paths(shard_dir)]
    out = {}
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        lbl = np.frombuffer(s["lbl"], np.uint8)
        ign = np.frombuffer(s["ign"], np.uint8) if "ign" in s else None
        out[s["__key__"]] = (s["jpg"], lbl, ign)
    return info, out


@pytest.mark.parametrize("dataset", list(MAKERS))
def test_round_trip_through_webdataset(tmp_path, rng, dataset):
    raw = tmp_path / "raw"
    meta = MAKERS[dataset](raw, rng)
    rc = make_shards.main(
        [
            "--data",
            dataset,
            "--root",
            str(raw),
            "--out",
            str(tmp_path / "shards"),
            "--shard-size",
            "2",
            "--workers",
            "2",
        ]
    )
    assert rc == 0
    from fastmlic.datasets import get_reader

    reader = get_reader(dataset)
    for split in reader.SPLITS:
        listing = reader.list_split(raw, split)
        info, samples = read_back(tmp_path / "shards" / dataset, split)
        assert info.classes == meta["classes"] and info.dataset == dataset
        expected = {s.key: s for s in listing.samples if s.key != "000004"}  # VOC's corrupt image
        assert set(samples) == set(expected)
        assert info.num_samples == len(samples) == sum(s.num_samples for s in info.shards)
        C = len(info.classes)
        positives = np.zeros(C, int)
        for key, (jpg, lbl, ign) in samples.items():
            assert lbl.tobytes() == encode_multi_hot(expected[key].positives, C)
            assert (ign is not None) == listing.has_ignore
            if ign is not None:
                assert ign.tobytes() == expected[key].ignore_row(C).tobytes()
            im = Image.open(io.BytesIO(jpg))
            assert im.format == "JPEG" and im.mode in ("RGB", "L")
            positives += lbl
        assert info.positives == positives.tolist()
        co = np.array(info.cooccurrence)
        assert co.shape == (C, C) and (np.diag(co) == positives).all() and (co == co.T).all()


def test_voc2012_splits_follow_the_train_aug_list_and_difficult_objects_can_count(tmp_path, rng):
    raw = rawdata.make_voc2012(tmp_path / "raw", rng, train_aug=False)
    out = tmp_path / "s"
    assert make_shards.main(["--data", "voc2012", "--root", str(tmp_path / "raw"), "--out", str(out)]) == 0
    written = {p.name for p in (out / "voc2012").glob("*.json")}
    assert {"train.json", "val.json"} <= written and "train_aug.json" not in written
    chair = raw["classes"].index("chair")
    assert SplitInfo.load(out / "voc2012" / "train.json").ignored[chair] == 1
    ids = rawdata.write(tmp_path / "train_aug.txt", "2008_000001\r\n")
    args = ["--data", "voc2012", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "p")]
    assert make_shards.main([*args, "--difficult", "positive", "--train-aug-list", str(ids)]) == 0
    aug = SplitInfo.load(tmp_path / "p" / "voc2012" / "train_aug.json")
    assert aug.num_samples == 1 and aug.positives[chair] == 1
    assert "every object counts" in aug.source["conventions"]


def test_voc_png_reencoded_and_corrupt_image_skipped_counted_and_reported(tmp_path, rng):
    rawdata.make_voc(tmp_path / "raw", rng)
    assert (
        make_shards.main(["--data", "voc2007", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "s")])
        == 0
    )
    trainval = SplitInfo.load(tmp_path / "s" / "voc2007" / "trainval.json")
    assert trainval.reencoded == {"format PNG": 1}
    assert trainval.ignored[rawdata.VOC_CLASSES.index("chair")] == 1
    test = SplitInfo.load(tmp_path / "s" / "voc2007" / "test.json")
    assert test.num_samples == 1 and test.dropped == {"corrupt image": 1}
    report = (tmp_path / "s" / "voc2007" / "test.skipped.tsv").read_text().splitlines()
    assert report[0] == "shard\tkey\tsource\treason"
    assert report[1].startswith("test-000000\t000004\t") and "000004.jpg" in report[1]


def test_coco_grayscale_passes_through_and_unannotated_is_counted(tmp_path, rng):
    raw = tmp_path / "raw"
    rawdata.make_coco(raw, rng)
    assert make_shards.main(["--data", "mscoco", "--root", str(raw), "--out", str(tmp_path / "s")]) == 0
    info, samples = read_back(tmp_path / "s" / "mscoco", "train")
    assert info.dropped == {"no annotations": 1} and info.reencoded == {}
    gray = samples["COCO_train2014_000000000025"][0]
    assert gray == (raw / "train2014" / "COCO_train2014_000000000025.jpg").read_bytes()
    assert Image.open(io.BytesIO(gray)).mode == "L"


def test_missing_annotation_stops_before_any_work(tmp_path, rng, capsys):
    rawdata.make_nuswide(tmp_path / "raw", rng)
    (tmp_path / "raw" / "Groundtruth" / "TrainTestLabels" / "Labels_concept03_Test.txt").unlink()
    assert (
        make_shards.main(["--data", "nuswide", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "s")])
        == 2
    )
    assert "Labels_concept03_Test.txt" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing written, not even the train split


def test_missing_images_listed_and_skip_missing(tmp_path, rng, capsys):
    raw = tmp_path / "raw"
    rawdata.make_vg500(raw, rng)
    (raw / "VG_100K" / "3.jpg").unlink()
    args = ["--data", "vg500", "--root", str(raw), "--out", str(tmp_path / "s")]
    assert make_shards.main(args) == 2
    err = capsys.readouterr().err
    assert "1 images are missing" in err and "3.jpg" in err and "--skip-missing" in err
    assert make_shards.main(args + ["--skip-missing"]) == 0
    info = SplitInfo.load(tmp_path / "s" / "vg500" / "train.json")
    assert info.num_samples == 2 and info.dropped == {"missing image": 1}


def test_openimages_shards_record_negatives_and_the_summary_counts_what_was_dropped(tmp_path, rng, capsys):
    raw = tmp_path / "raw"
    rawdata.make_openimages(raw, rng)
    (raw / "train_f" / "0000dd.jpg").unlink()
    args = ["--data", "openimages", "--root", str(raw), "--out", str(tmp_path / "s"), "--splits", "train"]
    assert make_shards.main(args) == 2  # a listed image that is not there is named, with the way out
    err = capsys.readouterr().err
    assert "1 images are missing" in err and "0000dd.jpg" in err and "--skip-missing" in err
    assert make_shards.main(args + ["--skip-missing"]) == 0
    out = capsys.readouterr().out
    assert "2 labels of non-trainable classes" in out and "1 no trainable verified label" in out
    info, samples = read_back(tmp_path / "s" / "openimages", "train")
    assert info.dropped == {"labels of non-trainable classes": 2, "no trainable verified label": 1,
                            "missing image": 1}  # fmt: skip
    _, lbl, ign = samples["0000aa"]
    assert lbl.tolist() == [0, 1, 0, 0, 0] and ign.tolist() == [0, 0, 1, 1, 1]  # Dog: a verified negative
    assert info.ignored == [1, 1, 2, 2, 1]  # per class: images where it is unknown


def test_no_cooccurrence_matrix_above_the_class_limit(tmp_path, rng, monkeypatch):
    from fastmlic.shards import build

    monkeypatch.setattr(build, "COOCCURRENCE_MAX_CLASSES", 3)
    listing = SplitListing(["a", "b", "c", "d"], [Sample("k0", rawdata.image_bytes(rng), (0, 2))])
    report = build_split(listing, tmp_path, "train", dataset="x", options=WriteOptions(shard_size=4))
    info = SplitInfo.load(report.json_path)
    assert info.cooccurrence == [] and info.positives == [1, 0, 1, 0]
    assert info.subset(["c", "a"], "here")[0].cooccurrence == []


def test_index_files_match_dalis_own_indexer(tmp_path, rng):
    wds2idx = shutil.which("wds2idx", path=str(ROOT / ".venv" / "bin")) or shutil.which("wds2idx")
    if wds2idx is None:
        pytest.skip("DALI's wds2idx is not installed")
    rawdata.make_voc(tmp_path / "raw", rng)
    make_shards.main(["--data", "voc2007", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "s")])
    tar = tmp_path / "s" / "voc2007" / "trainval-000000.tar"
    subprocess.run([wds2idx, str(tar), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert (tmp_path / "ref.idx").read_text() == tar.with_suffix(".idx").read_text()


def _listing(n, rng, C=5):
    samples = [Sample(f"k{i:03d}", rawdata.image_bytes(rng, (16, 16)), (i % C,)) for i in range(n)]
    return SplitListing([f"c{i}" for i in range(C)], samples)


def test_rerun_skips_complete_shards_and_resumes_an_interrupted_one(tmp_path, rng):
    listing = _listing(10, rng)
    listing.samples[0] = Sample("png", rawdata.image_bytes(rng, (16, 16), fmt="PNG"), (1,))
    listing.samples[1] = Sample("bad", rawdata.corrupt_jpeg(rng), (2,))
    out = tmp_path / "s"
    three = WriteOptions(shard_size=3)
    first = build_split(listing, out, "train", dataset="toy", options=three, shuffle_seed=1)
    assert first.shards_written == 4 and first.info.num_samples == 9
    assert first.info.reencoded == {"format PNG": 1} and len(first.bad) == 1
    reference = {p.name: p.read_bytes() for p in out.glob("train-*")}
    # simulate a crash while shard 2 was written: its index is missing, a temporary is left, and the
    # run never reached the end, so neither train.json nor train.skipped.tsv exists, and its plan is there
    (out / ".train.plan.json").write_text(json.dumps(first.info.plan))
    (out / "train-000002.idx").unlink()
    (out / ".train-000002.tar.tmp999").write_bytes(b"partial")
    (out / "train.json").unlink()
    (out / "train.skipped.tsv").unlink()
    second = build_split(listing, out, "train", dataset="toy", options=three, shuffle_seed=1)
    assert (second.shards_written, second.shards_reused) == (1, 3)
    assert {p.name: p.read_bytes() for p in out.glob("train-*")} == reference
    assert second.info.positives == first.info.positives
    assert second.info.cooccurrence == first.info.cooccurrence
    # nothing the interrupted run found is lost: re-encodes and skipped images of the kept shards
    assert second.info.reencoded == first.info.reencoded and second.info.dropped == first.info.dropped
    assert second.bad == first.bad and (out / "train.skipped.tsv").is_file()


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, rng):
    listing = _listing(6, rng)
    build_split(listing, tmp_path, "train", dataset="toy", options=WriteOptions(shard_size=3))
    with pytest.raises(ValueError, match="shard_size.*--overwrite"):
        build_split(listing, tmp_path, "train", dataset="toy", options=WriteOptions(shard_size=2))
    again = WriteOptions(shard_size=2, overwrite=True)
    report = build_split(listing, tmp_path, "train", dataset="toy", options=again)
    assert report.shards_written == 3 and len(list(tmp_path.glob("train-*.tar"))) == 3


@pytest.mark.parametrize("foreign", ["train.json", "train-000000.tar"])
def test_files_make_shards_did_not_write_are_refused_unless_overwrite(tmp_path, rng, foreign):
    listing = _listing(6, rng)
    (tmp_path / foreign).write_bytes(b'{"mine": true}')  # another tool's file under the split's names
    with pytest.raises(ValueError, match=f"{foreign}.*not .*make_shards.*--overwrite"):
        build_split(listing, tmp_path, "train", dataset="toy", options=WriteOptions(shard_size=3))
    assert (tmp_path / foreign).read_bytes() == b'{"mine": true}'  # untouched
    assert not list(tmp_path.glob("train-*.idx"))  # refused before anything was written
    again = WriteOptions(shard_size=3, overwrite=True)
    assert build_split(listing, tmp_path, "train", dataset="toy", options=again).info.num_samples == 6


def test_a_stray_shard_beside_the_split_is_named_in_the_summary(tmp_path, rng, capsys):
    listing = _listing(6, rng)
    first = build_split(listing, tmp_path, "train", dataset="toy", options=WriteOptions(shard_size=3))
    shutil.copy(tmp_path / "train-000000.tar", tmp_path / "train-000005.tar")  # left from an older set
    again = build_split(listing, tmp_path, "train", dataset="toy", options=WriteOptions(shard_size=3))
    assert again.stray == ["train-000005.tar"] and again.shards_reused == 2 and not first.stray
    text = make_shards.summary([again], tmp_path, 1.0)
    assert "warning: train-000005.tar in" in text and "train.json does not list them" in text


def test_training_split_is_shuffled_once_and_evaluation_keeps_order(tmp_path, rng):
    listing = _listing(20, rng)
    build_split(listing, tmp_path / "a", "val", dataset="toy", options=WriteOptions(shard_size=7))
    build_split(listing, tmp_path / "b", "train", dataset="toy", options=WriteOptions(shard_size=7),
                shuffle_seed=0)

    def keys(folder, split):
        tars = sorted(folder.glob(f"{split}-*.tar"))
        return [m.name.split(".")[0] for t in tars for m in tarfile.open(t) if m.name.endswith(".jpg")]

    assert keys(tmp_path / "a", "val") == [s.key for s in listing.samples]
    shuffled = keys(tmp_path / "b", "train")
    assert sorted(shuffled) == [s.key for s in listing.samples] and shuffled != sorted(shuffled)


def test_split_json_load_fails_on_a_missing_shard(tmp_path, rng):
    build_split(_listing(4, rng), tmp_path, "val", dataset="toy", options=WriteOptions(shard_size=2))
    (tmp_path / "val-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"val-000001\.tar: listed in .*val\.json but missing"):
        SplitInfo.load(tmp_path / "val.json")


def test_split_json_content(tmp_path, rng):
    rc = make_shards.main(
        [
            "--data",
            "digits",
            "--out",
            str(tmp_path),
            "--digits-train",
            "60",
            "--digits-val",
            "20",
            "--digits-size",
            "32",
            "--shard-size",
            "25",
        ]
    )
    assert rc == 0
    raw = json.loads((tmp_path / "digits" / "train.json").read_text())
    assert raw["classes"] == [str(d) for d in range(10)] and raw["num_samples"] == 60
    assert [s["num_samples"] for s in raw["shards"]] == [25, 25, 10]
    assert raw["source"]["command"].startswith("python tools/make_shards.py --data digits")
    assert 1 <= raw["labels_per_image"]["mean"] <= 4 and raw["format"] == "fastmlic-shards/1"


def test_cli_help_and_errors():
    tool = [sys.executable, str(ROOT / "tools" / "make_shards.py")]
    assert "--max-side" in subprocess.run(tool + ["--help"], capture_output=True, text=True).stdout
    r = subprocess.run(tool + ["--data", "mscoco"], capture_output=True, text=True)
    assert r.returncode == 2 and "--root is required" in r.stderr
    r = subprocess.run(
        tool + ["--data", "vg500", "--root", "/does/not/exist"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no such folder" in r.stderr


def test_an_empty_split_is_an_error_at_shard_time(tmp_path, capsys):
    out = tmp_path / "s"
    code = make_shards.main(["--data", "digits", "--out", str(out), "--digits-train", "0",
                             "--digits-val", "8", "--digits-size", "16"])  # fmt: skip
    assert code == 2
    assert "split 'train' of digits has no samples to write" in capsys.readouterr().err
    assert not (out / "digits" / "train.json").exists()


def test_a_missing_split_lists_the_splits_there_and_only_those(tmp_path):
    out = tmp_path / "s"
    assert make_shards.main(["--data", "digits", "--out", str(out), "--digits-train", "8",
                             "--digits-val", "8", "--digits-size", "16"]) == 0  # fmt: skip
    (out / "digits" / "label_embeddings.random.json").write_text('{"backend": "random"}')  # not a split
    with pytest.raises(FileNotFoundError, match=r"no vall.json in .*digits; splits there: train, val$"):
        SplitInfo.load(split_json_path(out / "digits", "vall"))
    with pytest.raises(FileNotFoundError, match=r"split description not found \(run tools/make_shards.py"):
        SplitInfo.load(split_json_path(tmp_path / "nowhere", "val"))


def test_voc2012_writes_the_segmentation_val_split_and_names_splits_that_share_images(tmp_path, rng, capsys):
    rawdata.make_voc2012(tmp_path / "raw", rng)
    out = tmp_path / "s"
    assert make_shards.main(["--data", "voc2012", "--root", str(tmp_path / "raw"), "--out", str(out)]) == 0
    seg_val = SplitInfo.load(out / "voc2012" / "seg_val.json")  # ImageSets/Segmentation/val.txt
    assert seg_val.num_samples == 1
    printed = capsys.readouterr().out
    assert "splits val and train_aug share 1 images" in printed  # Main val overlaps the training set
    assert "splits train_aug and seg_val" not in printed  # the split OASS evaluates on: disjoint
