"""python -m fastmlic.report on a tiny label-attention run: plots, links, per-class AP, a browser render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import rawdata
from PIL import Image

from fastmlic import evaluate, report, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    rawdata.digits_shards(tmp, 192, 64, 32)
    train.main(
        [
            "--cfg",
            "digits",
            f"--data.shards={tmp}",
            f"--train.out_dir={tmp}",
            "--train.name=run",
            "--data.image_size=32",
            "--data.workers=0",
            "--data.backend=torch",
            "--model.head=label_attention",
            "--model.embed_dim=32",
            "--model.heads=2",
            "--recipe.name=mulcon",
            "--recipe.weight=0.1",
            "--train.epochs=2",
            "--train.log_every=2",
            "--train.tensorboard=true",
        ]
    )
    return tmp / "run"


def test_report_writes_valid_plots_and_links_only_existing_files(run):
    page = report.main([str(run)])
    assert page == run / "report" / "report.html"
    text = page.read_text()
    linked = re.findall(r"(?:src|href)='([^']+)'", text)
    assert len(linked) == 6
    for name in linked:
        path = page.parent / name
        assert path.is_file(), name
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 200, (name, im.size)
    for needle in ("Run run", "best mAP", "Ten worst classes", "backbone: resnet18", "attention"):
        assert needle in text


def test_report_per_class_ap_equals_the_metrics_module(run):
    report.main([str(run)])
    in_report = json.loads((run / "report" / "per_class_ap.json").read_text())
    metrics = evaluate.main(["--ckpt", str(run / "best.pt")])
    assert list(in_report) == [str(d) for d in range(10)]
    assert list(in_report.values()) == pytest.approx(metrics["ap"], nan_ok=True)


def test_tensorboard_scalars_are_written_when_asked(run):
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    page = report.main([str(run)])
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            # no background connections: this machine's network is closed and refusals slow the start
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1100,3000",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as im:
        assert im.size == (1100, 3000)
        assert len(np.unique(np.asarray(im.convert("L").resize((50, 150))))) > 20  # not a blank page
    shutil.copy(shot, run / "report" / "screenshot.png")  # kept beside the report for a person to look at
