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
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import exit_on_user_error
from .data import build_loader, split_json
from .data.index import ShardIndex
from .engine import collect_predictions
from .metrics import multilabel_metrics
from .shards.format import SplitInfo
from .trainer import load_for_inference

GRID_IMAGES = 12
TOP_LABELS = 3


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the report needs matplotlib: pip install 'fastmlic[viz]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics log (is {run} a fastmlic run folder?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "epoch"]


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


def plot_class_ap(ap: np.ndarray, classes: list[str], positives: np.ndarray, out: Path) -> Path:
    plt = _plt()
    order = [c for c in np.argsort(ap) if np.isfinite(ap[c])]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(order) + 1)))
    ax.barh(range(len(order)), [ap[c] for c in order], color="tab:blue")
    ax.set_yticks(range(len(order)), [f"{classes[c]} ({positives[c]})" for c in order], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP (validation positives in brackets)")
    ax.set_title("per-class AP of the best checkpoint, worst at the bottom")
    return _save(fig, out / "class_ap.png")


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


def plot_cooccurrence(info: SplitInfo, out: Path) -> Path:
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


def plot_grid(preds: dict, index: ShardIndex, classes: list[str], threshold: float, out: Path) -> Path:
    from PIL import Image

    plt = _plt()
    keys = preds["keys"][:GRID_IMAGES]
    position = {ref.key: i for i, ref in enumerate(index.refs)}
    attention = preds.get("attention")
    # one image and its attention maps per row, or four images per row for heads without attention
    panels = 1 + (TOP_LABELS if attention is not None else 0)
    per_row = 1 if attention is not None else 4
    rows = -(-len(keys) // per_row)
    columns = panels * per_row
    fig, grid_axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in grid_axes.flat:
        ax.axis("off")
    for row, key in enumerate(keys):
        axes_row = grid_axes[row // per_row, (row % per_row) * panels : (row % per_row + 1) * panels]
        with Image.open(io.BytesIO(index.read(position[key], "jpg"))) as im:
            pixels = np.asarray(im.convert("RGB"))
        scores, truth = preds["scores"][row], preds["targets"][row]
        top = np.argsort(-scores)[:TOP_LABELS]
        above = [c for c in np.argsort(-scores) if scores[c] >= threshold]
        predicted = [f"{classes[c]} {scores[c]:.2f}" for c in above[:4]] + (["..."] if len(above) > 4 else [])
        ax = axes_row[0]
        ax.axis("on")
        ax.imshow(pixels)
        ax.set_title("true: " + ", ".join(classes[c] for c in np.flatnonzero(truth)), fontsize=7)
        ax.set_xlabel("pred: " + (", ".join(predicted) or "-"), fontsize=7)
        for col, c in enumerate(top, start=1) if attention is not None else []:
            grid = attention_grid(attention[row, c], preds["grid"])
            axes_row[col].axis("on")
            axes_row[col].imshow(pixels)
            axes_row[col].imshow(grid, cmap="jet", alpha=0.45, interpolation="bilinear",
                                 extent=(0, pixels.shape[1], pixels.shape[0], 0))  # fmt: skip
            axes_row[col].set_title(f"attention: {classes[c]} {scores[c]:.2f}", fontsize=7)
        for ax in axes_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "validation images: true and predicted labels" + (", attention" if attention is not None else "")
    )
    return _save(fig, out / "predictions.png", top=1 - 0.5 / fig.get_figheight())


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


def _save(fig, path: Path, top: float = 1.0) -> Path:
    fig.tight_layout(rect=(0, 0, 1, top))  # `top` < 1 leaves room for a suptitle
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def build_report(run: Path, split: str | None = None, out: Path | None = None) -> Path:
    run = Path(run)
    out = Path(out or run / "report")
    out.mkdir(parents=True, exist_ok=True)
    steps, epochs = read_log(run)
    if not epochs:
        raise ValueError(f"{run}: no finished epoch in metrics.jsonl yet")
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
        "Validation mAP, raw and EMA": plot_map(epochs, out),
        "Throughput and data wait": plot_throughput(epochs, out),
        "Per-class AP": plot_class_ap(ap, classes, positives, out),
        "Label co-occurrence (training split)": plot_cooccurrence(train_info, out),
        "Predictions": plot_grid(
            preds, ShardIndex(loader.shard_info, path.parent), classes, cfg.train.threshold, out
        ),
    }
    (out / "per_class_ap.json").write_text(json.dumps(dict(zip(classes, metrics["ap"], strict=True))))
    headline = {
        "best mAP": f"{ckpt.metrics['mAP']:.4f} ({ckpt.source} weights, epoch {ckpt.state.best_epoch})",
        f"mAP on {split} (this report)": f"{metrics['mAP']:.4f} ({cfg.train.map_flavour})",
        "mAP VOC2012 / non-interpolated": f"{metrics['mAP_voc2012']:.4f} / "
        f"{metrics['mAP_non_interpolated']:.4f}",
        "best raw / EMA mAP": f"{max(r['raw_mAP'] for r in epochs):.4f} / "
        + (f"{max(r['ema_mAP'] for r in epochs):.4f}" if "ema_mAP" in epochs[0] else "-"),
        "CF1 / OF1 at threshold": f"{metrics['CF1']:.4f} / {metrics['OF1']:.4f} "
        f"(threshold {cfg.train.threshold})",
        "images/s (last epoch)": f"{epochs[-1]['images_per_s']:.0f}, data wait {epochs[-1]['data_wait']:.0%}",
        "peak memory (MB)": f"{epochs[-1]['peak_memory_mb']:.0f}",
        "epochs, images": f"{epochs[-1]['epoch']}, {len(preds['keys'])} evaluated",
        "versions": f"python {platform.python_version()}, torch {torch.__version__}",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
    }
    page = render_html(run, headline, figures, confusions(preds, classes, ap, cfg.train.threshold),
                       (run / "config.yaml").read_text())  # fmt: skip
    (out / "report.html").write_text(page)
    return out / "report.html"


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
    return path


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
