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
    for needle in ("Run run", "best mAP", "Ten worst classes", "backbone: resnet18", "attention",
                   "peak process RSS (MB)"):
        assert needle in text


def test_a_cut_metrics_line_is_skipped_naming_the_file_and_line(run, tmp_path, capsys):
    copy = tmp_path / "cut"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report"))
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, lines[2][: len(lines[2]) // 2])  # as a crash mid-write leaves it
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    text = report.main([str(copy)]).read_text()
    assert f"warning: {copy / 'metrics.jsonl'} line 3 is not a JSON record" in capsys.readouterr().err
    assert "best mAP" in text


def test_an_unwritable_out_is_one_line_naming_it(run, unwritable, capsys):
    from fastmlic.cli import exit_on_user_error

    assert exit_on_user_error(lambda: report.main([str(run), "--out", str(unwritable)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(unwritable) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_report_on_an_unfinished_run_says_so(run, tmp_path, capsys):
    copy = tmp_path / "unfinished"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report"))
    (copy / "summary.json").unlink()  # as a run stopped (or still going) after its first epoch
    rows = (copy / "metrics.jsonl").read_text().splitlines()
    rows = [r for r in rows if not (json.loads(r)["kind"] == "epoch" and json.loads(r)["epoch"] == 2)]
    (copy / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    text = report.main([str(copy)]).read_text()
    assert f"note: {copy} has not finished training" in capsys.readouterr().out
    resume = f"(continue it with python fastmlic/train.py --resume {copy})"
    assert f"<td>1 of 2: unfinished, best so far {resume}</td>" in text
    assert "unfinished" not in report.main([str(run)]).read_text()


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


@pytest.mark.parametrize("attention", [False, True])
def test_the_grid_puts_each_caption_under_its_own_image_marks_wrong_labels_and_cuts_nothing(attention):
    classes = [f"class{c}" for c in range(12)]
    rng = np.random.default_rng(0)
    n = 8
    scores = rng.uniform(0, 0.3, (n, 12)).astype(np.float32)
    targets = np.zeros((n, 12), np.uint8)
    targets[:, 0] = 1
    scores[0, :9] = 0.9  # nine labels above the threshold: all shown, eight of them marked wrong
    targets[1, 5] = 1  # a true label without a score above the threshold: listed as missed
    targets[2, :7] = 1  # a long caption in the middle of the grid
    scores[2, 3:12] = 0.8
    preds = {"keys": [f"k{i}" for i in range(n)], "scores": scores, "targets": targets}
    if attention:  # one image and the attention maps of its top labels per row
        preds.update(attention=rng.random((n, 12, 4)), grid=(2, 2))
    pixels = [rng.integers(0, 255, (40, 40, 3), np.uint8) for _ in range(n)]  # square: tallest in a column
    fig = report.grid_figure(preds, pixels, classes, 0.5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    images = [ax for ax in fig.axes if ax.images and ax.get_xlabel().startswith("true:")]
    assert len(images) == n and len([ax for ax in fig.axes if ax.images]) == n * (4 if attention else 1)
    texts = [t.get_text() for ax in fig.axes for t in (ax.xaxis.label, ax.title)] + [fig._suptitle.get_text()]
    assert not any("..." in t for t in texts)
    first = images[0].xaxis.label.get_text()
    assert all(f"class{c} 0.90" in first for c in range(9))
    assert first.count("(wrong)") == 8 and "class0 0.90 (wrong)" not in first
    assert "missed: class0, class5" in images[1].xaxis.label.get_text()
    for ax in images:
        caption = ax.xaxis.label.get_window_extent(renderer)
        box = ax.get_window_extent(renderer)
        assert caption.y1 <= box.y0 + 1 and box.x0 - 1 <= caption.x0 < box.x1  # under its own image
        below = [o.get_window_extent(renderer) for o in fig.axes
                 if o.images and o.get_window_extent(renderer).y1 < box.y0
                 and o.get_window_extent(renderer).x0 < caption.x1]  # fmt: skip
        assert all(caption.y0 >= b.y1 for b in below)  # and clear of the image under it
        others = [o for o in images if o is not ax]
        assert not any(caption.overlaps(o.xaxis.label.get_window_extent(renderer)) for o in others)
    report._plt().close(fig)


def test_per_class_ap_zooms_to_the_data_and_prints_each_value():
    ap = np.array([0.991, 0.985, 0.999, 0.97])
    fig = report.class_ap_figure(ap, ["a", "b", "c", "d"], np.array([5, 6, 7, 8]))
    ax = fig.axes[0]
    assert ax.get_xlim()[0] >= 0.9
    assert sorted(t.get_text() for t in ax.texts) == ["0.970", "0.985", "0.991", "0.999"]
    report._plt().close(fig)


def test_report_checks_packages_before_inference_and_leaves_nothing_on_failure(run, tmp_path, monkeypatch):
    from fastmlic import builder
    from fastmlic.cli import exit_on_user_error

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before the checks")

    monkeypatch.setattr(builder, "load_for_inference", no_inference)  # where the report imports it from
    monkeypatch.setitem(report.REPORT_NEEDS, "a_plotting_package_not_installed", "plotpkg")
    out = tmp_path / "r"
    assert exit_on_user_error(lambda: report.main([str(run), "--out", str(out)])) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.delitem(report.REPORT_NEEDS, "a_plotting_package_not_installed")
    not_a_run = tmp_path / "folder"
    not_a_run.mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics log"):
        report.main([str(not_a_run)])
    assert list(not_a_run.iterdir()) == []
    monkeypatch.undo()

    def fails(*args, **kwargs):
        raise ValueError("a failure halfway through")

    monkeypatch.setattr(report, "plot_cooccurrence", fails)
    with pytest.raises(ValueError, match="halfway"):
        report.main([str(run), "--out", str(out)])
    assert list(tmp_path.iterdir()) == [not_a_run]  # no report folder, no hidden work folder
