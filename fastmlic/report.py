"""A run report people look at: `python -m fastmlic.report RUN [--split val] [--out RUN/report]`.

Writes report.html with its PNGs beside it (no network needed to view): loss and learning rate per
step; validation mAP per epoch, raw and EMA; throughput and data-wait share per epoch; per-class AP
of the best checkpoint with the ten worst classes and what they are confused with; the training
split's label co-occurrence, clustered; a grid of validation images with true and predicted labels,
and for label-attention heads each image's attention for its top predicted labels.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cli import exit_on_user_error
from .errors import InputError, MissingInput, MissingPackage
from .shards.format import SplitInfo
from .shards.storage import split_location

if TYPE_CHECKING:
    from .data.index import ShardIndex

GRID_IMAGES = 12
TOP_LABELS = 3


REPORT_NEEDS = {"matplotlib": "matplotlib", "scipy": "scipy"}  # module: pip package


def check_dependencies() -> None:
    """Before any inference: the plotting packages the report needs are installed."""
    import importlib.util

    missing = [pkg for module, pkg in REPORT_NEEDS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingPackage(f"the report needs {' and '.join(missing)}: pip install 'fastmlic[viz]'")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """The run's training records and epochs; none for a run that was not trained here (converted by
    `python -m fastmlic.convert`: a best.pt and no metrics log)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        if (run / "best.pt").is_file():
            return [], []
        raise MissingInput(f"{path}: no metrics log (is {run} a fastmlic run folder?)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as e:  # a line cut by a crash or a full disk: the rest still reports
            row = None
            print(f"warning: {path} line {number} is not a JSON record ({e.msg}): skipped", file=sys.stderr)
        if isinstance(row, dict):
            rows.append(row)
    return [r for r in rows if r.get("kind") == "train"], [r for r in rows if r.get("kind") == "epoch"]


def plot_training(steps: list[dict], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = [r["step"] for r in steps]
    ax.plot(x, [r["loss"] for r in steps], color="tab:blue", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="tab:blue")
    lr_ax = ax.twinx()
    lr_ax.plot(x, [r["lr"] for r in steps], color="tab:orange", lw=1)
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax.set_title("training loss and learning rate")
    return _save(fig, out / "loss_lr.png")


def plot_map(epochs: list[dict], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = [r["epoch"] for r in epochs]
    ax.plot(x, [r["raw_mAP"] for r in epochs], "o-", label="raw")
    if "ema_mAP" in epochs[0]:
        ax.plot(x, [r["ema_mAP"] for r in epochs], "s-", label="EMA")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("validation mAP")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("validation mAP per epoch")
    return _save(fig, out / "map.png")


def plot_throughput(epochs: list[dict], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = [r["epoch"] for r in epochs]
    ax.bar(x, [r["images_per_s"] for r in epochs], color="tab:green", alpha=0.7)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("images/s (all devices)", color="tab:green")
    wait_ax = ax.twinx()
    wait_ax.plot(x, [100 * r["data_wait"] for r in epochs], "o-", color="tab:red")
    wait_ax.set_ylabel("data wait, % of step time", color="tab:red")
    wait_ax.set_ylim(0, 100)
    ax.set_title("throughput and input stalls")
    return _save(fig, out / "throughput.png")


def class_ap_figure(ap: np.ndarray, classes: list[str], positives: np.ndarray):
    plt = _plt()
    order = [c for c in np.argsort(ap) if np.isfinite(ap[c])]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.24 * len(order) + 1)))
    values = [ap[c] for c in order]
    ax.barh(range(len(order)), values, color="tab:blue")
    ax.set_yticks(range(len(order)), [f"{classes[c]} ({positives[c]})" for c in order], fontsize=8)
    # the axis starts just below the worst class, so differences between high APs stay visible
    low = max(0.0, np.floor((min(values, default=0.0) - 0.02) * 20) / 20)
    ax.set_xlim(low, 1.0)
    for y, v in enumerate(values):  # the value itself, whatever the spread
        ax.text(max(v, low) - 0.005 * (1 - low), y, f"{v:.3f}", va="center", ha="right", fontsize=7,
                color="white")  # fmt: skip
    ax.set_xlabel(f"AP (axis from {low:.2f}; validation positives in brackets)")
    ax.set_title("per-class AP of the best checkpoint, worst at the bottom")
    return fig


def plot_class_ap(ap: np.ndarray, classes: list[str], positives: np.ndarray, out: Path) -> Path:
    return _save(class_ap_figure(ap, classes, positives), out / "class_ap.png")


def cluster_order(affinity: np.ndarray) -> list[int]:
    """Classes ordered by average-linkage clustering on 1 - affinity, so classes that often appear
    together sit next to each other and blocks show."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(affinity) < 3:
        return list(range(len(affinity)))
    distance = 1 - affinity / max(affinity.max(), 1e-12)
    np.fill_diagonal(distance, 0)
    return leaves_list(linkage(squareform(distance, checks=False), method="average")).tolist()


def plot_cooccurrence(info: SplitInfo, out: Path) -> Path | None:
    if not info.cooccurrence:  # not recorded for thousands of classes (Open Images)
        return None
    plt = _plt()
    counts = np.asarray(info.cooccurrence, dtype=np.float64)
    # P(column | row): how often a row class's images also hold the column class
    conditional = counts / np.maximum(np.diag(counts)[:, None], 1)
    np.fill_diagonal(conditional, 0)
    order = cluster_order((conditional + conditional.T) / 2)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(conditional[np.ix_(order, order)], cmap="viridis")
    if len(order) <= 40:
        names = [info.classes[c] for c in order]
        ax.set_xticks(range(len(order)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(order)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="P(column label | row label)")
    ax.set_title(f"label co-occurrence, {info.split} split ({info.num_samples} images), clustered")
    return _save(fig, out / "cooccurrence.png")


def grid_captions(scores: np.ndarray, truth: np.ndarray, classes: list[str], threshold: float) -> str:
    """An image's caption: its true labels, then every label predicted at the threshold with its score,
    a wrong one marked, and the true labels it missed; wrapped between labels, nothing cut."""
    true = set(np.flatnonzero(truth).tolist())
    above = [c for c in np.argsort(-scores) if scores[c] >= threshold]
    predicted = [f"{classes[c]} {scores[c]:.2f}" + ("" if c in true else " (wrong)") for c in above]
    lines = _wrap("true: ", [classes[c] for c in sorted(true)]) + _wrap("pred: ", predicted)
    missed = [classes[c] for c in sorted(true - set(above))]
    if missed:
        lines += _wrap("missed: ", missed)
    return "\n".join(lines)


def _wrap(prefix: str, items: list[str], width: int = 34) -> list[str]:
    """'prefix a, b, c' in lines of about `width` characters, broken only between items."""
    lines, line = [], prefix + (items[0] if items else "-")
    for item in items[1:]:
        if len(line) + 2 + len(item) > width:
            lines.append(line + ",")
            line = "  " + item
        else:
            line += ", " + item
    return lines + [line]


def grid_figure(preds: dict, pixels: list[np.ndarray], classes: list[str], threshold: float):
    """Each image with its caption below it (true, predicted, missed); with attention, one image per
    row followed by the attention of its top predicted labels."""
    plt = _plt()
    attention = preds.get("attention")
    panels = 1 + (TOP_LABELS if attention is not None else 0)
    per_row = 1 if attention is not None else 4
    rows = -(-len(pixels) // per_row)
    captions = [grid_captions(preds["scores"][i], preds["targets"][i], classes, threshold)
                for i in range(len(pixels))]  # fmt: skip
    caption_lines = max((c.count("\n") + 1 for c in captions), default=1)
    # a square image as wide as its column, then room for the longest caption (7 pt lines, 1.3 apart)
    row_height = 2.8 + 0.17 * caption_lines
    fig, grid_axes = plt.subplots(rows, panels * per_row, figsize=(2.7 * panels * per_row, row_height * rows),
                                  squeeze=False)  # fmt: skip
    for ax in grid_axes.flat:
        ax.axis("off")
    for i, image in enumerate(pixels):
        axes_row = grid_axes[i // per_row, (i % per_row) * panels : (i % per_row + 1) * panels]
        ax = axes_row[0]
        ax.axis("on")
        ax.imshow(image)
        ax.set_xlabel(captions[i], fontsize=7, loc="left", linespacing=1.3)
        scores = preds["scores"][i]
        for col, c in enumerate(np.argsort(-scores)[:TOP_LABELS], start=1) if attention is not None else []:
            axes_row[col].axis("on")
            axes_row[col].imshow(image)
            heat = attention_grid(attention[i, c], preds["grid"])
            axes_row[col].imshow(heat, cmap="jet", alpha=0.45, interpolation="bilinear",
                                 extent=(0, image.shape[1], image.shape[0], 0))  # fmt: skip
            axes_row[col].set_xlabel(f"attention: {classes[c]} {scores[c]:.2f}", fontsize=7)
        for ax in axes_row:
            ax.set_xticks([])
            ax.set_yticks([])
    with_attention = ", attention" if attention is not None else ""
    fig.suptitle(f"validation images: true and predicted labels{with_attention}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig


def plot_grid(preds: dict, index: ShardIndex, classes: list[str], threshold: float, out: Path) -> Path:
    from PIL import Image

    position = {ref.key: i for i, ref in enumerate(index.refs)}
    pixels = []
    for key in preds["keys"][:GRID_IMAGES]:
        with Image.open(io.BytesIO(index.read(position[key], "jpg"))) as im:
            pixels.append(np.asarray(im.convert("RGB")))
    fig = grid_figure(preds, pixels, classes, threshold)
    return _save(fig, out / "predictions.png", layout=False)


def attention_grid(weights: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Attention over the H * W tokens as the feature grid (H, W) they came from."""
    return weights.reshape(grid)


def confusions(preds: dict, classes: list[str], ap: np.ndarray, threshold: float) -> list[dict]:
    """The ten worst classes, each with the labels most often present where it was wrongly predicted."""
    scores, truth = preds["scores"], preds["targets"] > 0
    rows = []
    for c in [c for c in np.argsort(ap) if np.isfinite(ap[c])][:10]:
        false_pos = (scores[:, c] >= threshold) & ~truth[:, c]
        present = truth[false_pos].sum(0)
        present[c] = 0
        common = [f"{classes[o]} ({present[o]})" for o in np.argsort(-present)[:3] if present[o] > 0]
        rows.append({"class": classes[c], "ap": float(ap[c]), "positives": int(truth[:, c].sum()),
                     "false_positives": int(false_pos.sum()),
                     "confused_with": ", ".join(common) or "-"})  # fmt: skip
    return rows


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def build_report(run: Path, split: str | None = None, out: Path | None = None) -> Path:
    """Checks the packages and the run before any inference; the files are written to a hidden
    folder beside `out` and moved into `out` only when all are there, so a failure leaves nothing."""
    check_dependencies()
    run = Path(run)
    out = Path(out or run / "report")
    steps, epochs = read_log(run)
    if not epochs and (run / "metrics.jsonl").is_file():
        raise InputError(f"{run}: no finished epoch in metrics.jsonl yet")
    if not (run / "best.pt").is_file():
        raise MissingInput(f"{run / 'best.pt'}: not there (is {run} a finished fastmlic run?)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:  # name the folder asked for, not the hidden one beside it
        e.filename = str(out)
        raise
    try:
        _write_report(run, split, work, steps, epochs)
        out.mkdir(exist_ok=True)
        for path in work.iterdir():
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out / "report.html"


def _write_report(run: Path, split: str | None, out: Path, steps: list[dict], epochs: list[dict]) -> None:
    # torch and everything built on it, here: `--help` and the checks before inference answer without them
    import torch

    from .builder import load_for_inference
    from .data import build_loader, split_json
    from .data.index import ShardIndex
    from .engine import collect_predictions
    from .metrics import multilabel_metrics

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_for_inference(run / "best.pt", [], device)
    cfg, ckpt, classes = model.cfg, model.checkpoint, model.classes
    split = split or cfg.data.val_split
    path = split_json(cfg.data, split)
    loader = build_loader(path, cfg.data, train=False, device=device, classes=classes)
    preds = collect_predictions(model.module, loader, device=device, amp=model.amp, return_attention=True)
    metrics = multilabel_metrics(preds["scores"], preds["targets"], preds["ignore"], cfg.train.threshold,
                                 cfg.train.map_flavour)  # fmt: skip
    ap = np.asarray(metrics["ap"], dtype=float)
    positives = (preds["targets"] > 0).sum(0)
    train_path = split_json(cfg.data, cfg.data.train_split)
    train_info = SplitInfo.load(train_path)
    if train_info.classes != classes:  # a run over a class subset: its classes' co-occurrence
        train_info = train_info.subset(classes, str(train_path))[0]
    figures = {
        "Training loss and learning rate": plot_training(steps, out) if steps else None,
        "Validation mAP, raw and EMA": plot_map(epochs, out) if epochs else None,
        "Throughput and data wait": plot_throughput(epochs, out) if epochs else None,
        "Per-class AP": plot_class_ap(ap, classes, positives, out),
        "Label co-occurrence (training split)": plot_cooccurrence(train_info, out),
        "Predictions": plot_grid(
            preds, ShardIndex(loader.shard_info, split_location(path)[0]), classes, cfg.train.threshold, out
        ),
    }
    (out / "per_class_ap.json").write_text(json.dumps(dict(zip(classes, metrics["ap"], strict=True))))
    trained = (training_headline(epochs, ckpt, run, cfg.train.epochs) if epochs
               else {"weights": converted_from(run, ckpt)})  # fmt: skip
    headline = {
        **trained,
        f"mAP on {split} (this report)": f"{metrics['mAP']:.4f} ({cfg.train.map_flavour})",
        "mAP VOC2012 / non-interpolated": f"{metrics['mAP_voc2012']:.4f} / "
        f"{metrics['mAP_non_interpolated']:.4f}",
        "CF1 / OF1 at threshold": f"{metrics['CF1']:.4f} / {metrics['OF1']:.4f} "
        f"(threshold {cfg.train.threshold})",
        "images evaluated": f"{len(preds['keys'])}",
        "versions": f"python {platform.python_version()}, torch {torch.__version__}",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
    }
    page = render_html(run, headline, figures, confusions(preds, classes, ap, cfg.train.threshold),
                       (run / "config.yaml").read_text())  # fmt: skip
    (out / "report.html").write_text(page)


def training_headline(epochs: list[dict], ckpt, run: Path, planned: int) -> dict:
    from .run import finished

    last = epochs[-1]
    unfinished = "" if finished(run) else (f" of {planned}: unfinished, best so far (continue it with python "
                                      f"fastmlic/train.py --resume {run})")  # fmt: skip
    return {
        "best mAP": f"{ckpt.metrics['mAP']:.4f} ({ckpt.source} weights, epoch {ckpt.state.best_epoch})",
        "best raw / EMA mAP": f"{max(r['raw_mAP'] for r in epochs):.4f} / "
        + (f"{max(r['ema_mAP'] for r in epochs):.4f}" if "ema_mAP" in epochs[0] else "-"),
        "images/s (last epoch)": f"{last['images_per_s']:.0f}, data wait {last['data_wait']:.0%}",
        # older runs did not record what was measured
        f"peak {last.get('peak_memory_kind', 'memory')} (MB)": f"{last['peak_memory_mb']:.0f}",
        "epochs": f"{last['epoch']}{unfinished}",
    }


def converted_from(run: Path, ckpt) -> str:
    """What a run that was not trained here holds: its log's first lines say where it came from."""
    log = run / "log.txt"
    lines = log.read_text().splitlines()[:2] if log.is_file() else []
    return f"{ckpt.source} weights, not trained here" + (f": {'; '.join(lines)}" if lines else "")


def render_html(run: Path, headline: dict, figures: dict, worst: list[dict], config_text: str) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in headline.items())
    worst_rows = "".join(
        f"<tr><td>{e(w['class'])}</td><td>{w['ap']:.4f}</td><td>{w['positives']}</td>"
        f"<td>{w['false_positives']}</td><td>{e(w['confused_with'])}</td></tr>"
        for w in worst
    )
    sections = "".join(
        f"<h2>{e(title)}</h2><img src='{e(path.name)}' alt='{e(title)}'>"
        for title, path in figures.items()
        if path is not None
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fastmlic report: {e(run.name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%;border:1px solid #eee}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>Run {e(run.name)}</h1>
<table>{rows}</table>
{sections}
<h2>Ten worst classes</h2>
<table><tr><th>class</th><th>AP</th><th>positives</th><th>false positives</th>
<th>labels present in its false positives</th></tr>{worst_rows}</table>
<h2>Config</h2><pre>{e(config_text)}</pre>
</body></html>
"""


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder (holds metrics.jsonl and best.pt)")
    p.add_argument(
        "--split", help="split for the per-class AP and the image grid (default: the run's val split)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: RUN/report)")
    args = p.parse_args(argv)
    path = build_report(args.run, args.split, args.out)
    print(f"report: {path}  (open it in a browser; PNGs beside it)")
    from .run import finished  # torch is loaded by now

    if (args.run / "metrics.jsonl").is_file() and not finished(args.run):
        print(f"note: {args.run} has not finished training: the report shows its best weights so far "
              f"(continue it with python fastmlic/train.py --resume {args.run})")  # fmt: skip
    return path


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
