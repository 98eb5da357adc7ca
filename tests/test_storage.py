"""Shards on object storage, served on 127.0.0.1 by the test: moto's S3 server and a plain http file
server. make_shards uploads to s3://; training reads s3:// (both backends) and http:// (PyTorch) with the
losses it has from the local folder; resume works from a URL; every failure names the URL and status."""

from __future__ import annotations

import importlib.util
import json
import socket

import boto3
import pytest
import servers
from conftest import ROOT
from test_train import epochs, run_train

from fastmlic import evaluate, train
from fastmlic.config import load_config
from fastmlic.data import DataError, build_loader
from fastmlic.data.dali_loader import dali_available
from fastmlic.errors import InputError, MissingInput
from fastmlic.shards.format import SplitInfo
from fastmlic.shards.storage import HttpStore, ObjectMissing, StorageError, join, open_store

spec = importlib.util.spec_from_file_location("make_shards", ROOT / "tools" / "make_shards.py")
make_shards = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_shards)

SMALL = ["--data", "digits", "--digits-train", "256", "--digits-val", "96", "--digits-size", "32",
         "--shard-size", "128"]  # fmt: skip


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert make_shards.main([*SMALL, "--out", str(out)]) == 0
    return out


@pytest.fixture
def bucket(monkeypatch, local):
    """A bucket holding the same digits shards, uploaded by make_shards --out s3://."""
    with servers.s3_server(monkeypatch):
        boto3.client("s3").create_bucket(Bucket="data")
        assert make_shards.main([*SMALL, "--out", "s3://data/sets"]) == 0
        yield "s3://data/sets"


def test_make_shards_uploads_what_it_builds_locally_split_description_last(bucket, local):
    s3 = boto3.client("s3")
    listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="data")["Contents"]}
    here = {f"sets/digits/{p.name}": p.stat().st_size for p in (local / "digits").iterdir()
            if p.suffix in (".tar", ".idx")}  # fmt: skip
    # the same shards (the build is deterministic) and the split descriptions; nothing else (no journal)
    assert listed == {**here, "sets/digits/train.json": listed["sets/digits/train.json"],
                      "sets/digits/val.json": listed["sets/digits/val.json"]}  # fmt: skip

    calls = []

    class Recorder:
        root = "s3://x"

        def read(self, name):
            raise ObjectMissing(f"{name}: HTTP 404")

        def upload(self, path, name):
            calls.append(name)

    info = SplitInfo.load(local / "digits" / "train.json")
    report = make_shards.SplitReport("train", info, local / "digits" / "train.json")
    make_shards.upload([report], local / "digits", Recorder(), overwrite=False)
    assert calls == ["train-000000.tar", "train-000000.idx", "train-000001.tar", "train-000001.idx",
                     "train.json"]  # fmt: skip


def test_training_from_s3_gives_the_local_losses_and_resumes(bucket, local, tmp_path):
    run_train(local, tmp_path, "disk", "--train.epochs=2")
    run_train(bucket, tmp_path, "s3", "--train.epochs=2", "--data.workers=2")  # workers: their own clients
    assert losses(tmp_path / "s3") == losses(tmp_path / "disk") and losses(tmp_path / "disk")
    from_s3 = evaluate.main(["--ckpt", str(tmp_path / "s3" / "best.pt"), f"--data.shards={bucket}"])
    from_disk = evaluate.main(["--ckpt", str(tmp_path / "s3" / "best.pt"), f"--data.shards={local}"])
    assert from_s3["mAP"] == from_disk["mAP"] and from_s3["num_samples"] == 96
    run_train(bucket, tmp_path, "cut", "--train.epochs=2", "--train.stop_after=1")
    train.main(["--resume", str(tmp_path / "cut"), "--train.stop_after=0"])
    assert epochs(tmp_path / "cut") == epochs(tmp_path / "disk")


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_dali_reads_s3_with_the_local_losses(bucket, local, tmp_path):
    dali = ["--data.backend=dali", "--train.epochs=1"]
    run_train(local, tmp_path, "disk", *dali)
    run_train(bucket, tmp_path, "s3", *dali)
    # DALI's CPU pipeline is deterministic for a seed: the same bytes from S3 give the same steps
    s3, disk = losses(tmp_path / "s3"), losses(tmp_path / "disk")
    assert [step for step, _ in s3] == [step for step, _ in disk] and disk
    assert [loss for _, loss in s3] == pytest.approx([loss for _, loss in disk], rel=1e-5)


def test_training_over_http_gives_the_local_losses_and_dali_is_refused(local, tmp_path):
    with servers.http_server(local) as url:
        run_train(local, tmp_path, "disk", "--train.epochs=1")
        run_train(url, tmp_path, "http", "--train.epochs=1")
        assert losses(tmp_path / "http") == losses(tmp_path / "disk")
        cfg = load_config("digits", [f"--data.shards={url}", "--data.backend=dali"])
        with pytest.raises(DataError, match=r"DALI's readers take folders and s3:// URLs, not http"):
            build_loader(join(url, "digits", "train.json"), cfg.data, train=True)


def test_missing_objects_and_denied_requests_name_the_url_and_status(bucket, local, tmp_path):
    s3 = boto3.client("s3")
    s3.put_object(Bucket="data", Key="sets/digits/train-000001.tar", Body=b"not the shard SPLIT.json lists")
    with pytest.raises(InputError, match=r"digits/train-000001.tar: 30 bytes, .*train.json says"):
        SplitInfo.load("s3://data/sets/digits/train.json")
    s3.upload_file(str(local / "digits" / "train-000001.tar"), "data", "sets/digits/train-000001.tar")
    s3.delete_object(Bucket="data", Key="sets/digits/val-000000.tar")
    with pytest.raises(MissingInput, match=r"s3://data/sets/digits/val-000000.tar: listed in .*val.json but "
                                           r"not there \(HTTP 404\)"):  # fmt: skip
        SplitInfo.load("s3://data/sets/digits/val.json")
    with pytest.raises(MissingInput, match=r"s3://data/sets/nosuch/train.json: HTTP 404"):
        SplitInfo.load("s3://data/sets/nosuch/train.json")
    with pytest.raises(MissingInput, match=r"s3://data/sets/digits/val-000000.tar: listed"):
        run_train(bucket, tmp_path, "gone")
    with servers.http_server(local) as url:
        with pytest.raises(StorageError, match=rf"{url}/denied/x.tar: HTTP 403"):
            HttpStore(url).read_range("denied/x.tar", 0, 10)
        with pytest.raises(MissingInput, match=rf"{url}/digits/nosuch.json: HTTP 404"):
            SplitInfo.load(f"{url}/digits/nosuch.json")


def test_a_server_that_ignores_ranges_or_never_answers_is_named(local, monkeypatch):
    with servers.http_server(local, range_requests=False) as url:
        with pytest.raises(StorageError, match=r"000000.tar: the server ignores Range requests \(HTTP 200"):
            open_store(url).read_range("digits/train-000000.tar", 0, 100)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never answers
    monkeypatch.setenv("FASTMLIC_URL_TIMEOUT", "0.5")
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(StorageError, match=rf"{url}/digits/train.json: no answer within 0.5 s"):
            SplitInfo.load(f"{url}/digits/train.json")
    finally:
        silent.close()


def test_make_shards_refuses_http_output_and_replaces_an_s3_split_only_with_overwrite(bucket, capsys):
    with pytest.raises(SystemExit):
        make_shards.main([*SMALL, "--out", "http://127.0.0.1:1/x"])
    assert "not over http" in capsys.readouterr().err
    assert make_shards.main([*SMALL, "--out", "s3://data/sets", "--seed", "1"]) == 2
    assert "describes shards made with other settings; pass --overwrite" in capsys.readouterr().err
    assert make_shards.main([*SMALL, "--out", "s3://data/sets", "--seed", "1", "--overwrite"]) == 0
    assert "--seed 1" in SplitInfo.load(f"{bucket}/digits/train.json").source["command"]
