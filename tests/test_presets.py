"""The papers' presets train what the papers trained: the official ImageNet weights, which fail fast and
say how to get them where they cannot be had, and are read from the cache without a request where
they can."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from fastmlic.config import CONFIG_DIR, load_config

METHODS = ("mulcon_", "coco_", "sgre_", "psd_", "oass_")
PAPER = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")
               if p.stem.startswith(METHODS) and not p.stem.endswith("_digits"))  # fmt: skip


def test_every_paper_preset_starts_from_the_official_imagenet_weights():
    assert len(PAPER) == 21
    for name in PAPER:
        cfg = load_config(name)
        tag = "resnet50.tv_in1k" if name.startswith("oass_") else "resnet101.tv_in1k"  # torchvision's V1
        assert (cfg.model.backbone, cfg.model.pretrained) == (tag, True), name


def test_the_digits_presets_stay_from_random_weights():
    for path in CONFIG_DIR.glob("*_digits.yaml"):
        assert not load_config(path.stem).model.pretrained, path.stem


TRAIN_WITH_WEIGHTS = [sys.executable, str(ROOT / "fastmlic" / "train.py"), "--cfg", "digits",
                      "--model.backbone=resnet10t.c3_in1k", "--model.pretrained=true"]  # fmt: skip


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["offline", "hub unreachable"])  # fmt: skip
def test_weights_that_cannot_be_had_fail_in_seconds_before_any_folder(tmp_path, env):
    hub = tmp_path / "hub"  # an empty cache: the weights are nowhere here
    started = time.perf_counter()
    out = f"--train.out_dir={tmp_path / 'runs'}"
    done = subprocess.run([*TRAIN_WITH_WEIGHTS, out, "--data.shards=nowhere"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "HF_HUB_CACHE": str(hub), **env})  # fmt: skip
    seconds = time.perf_counter() - started
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    for needle in ("resnet10t.c3_in1k", str(hub), "model.pretrained_path", "timm.create_model("):
        assert needle in err, (needle, err)
    assert not (tmp_path / "runs").exists()
    assert seconds < 40  # torch's and timm's imports included; the hub client alone retried for ~55 s


def test_cached_weights_load_with_no_request(tmp_path):
    """A warm cache serves the weights with no network: no request is made at all."""
    code = f"""
import torch, timm, safetensors.torch as st
from pathlib import Path
hub = Path({str(tmp_path / 'hub')!r})
snapshot = hub / "models--timm--resnet10t.c3_in1k" / "snapshots" / ("0" * 40)
snapshot.mkdir(parents=True)
(hub / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
(hub / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("0" * 40)
torch.manual_seed(1)
weights = timm.create_model("resnet10t").state_dict()
st.save_file(weights, str(snapshot / "model.safetensors"))
from fastmlic.models.backbone import Backbone
loaded = Backbone("resnet10t.c3_in1k", pretrained=True).model.state_dict()
same = all(torch.equal(loaded[k], weights[k]) for k in loaded)
print("loaded" if same and len(loaded) > 50 else "different")
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.strip() == "loaded", done.stderr[-2000:]
