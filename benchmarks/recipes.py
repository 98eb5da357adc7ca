#!/usr/bin/env python
"""Every recipe side by side on the same shards, budget and seed: best mAP (raw and EMA), throughput
and wall time per row, from the trainer itself (`fastmlic/train.py`), in one run.

    python benchmarks/recipes.py                                 # digits shards in ./shards, 3 epochs
    python benchmarks/recipes.py --rows standard,mulcon --train.epochs=5 --data.shards=/data/shards
    python benchmarks/recipes.py --quick                         # tiny digits set, one epoch (CI smoke)

A row is a recipe with the head it needs; `standard/label_attention` separates the head's effect from
the recipe's. Extra `--section.key=value` arguments apply to every row.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402
from fastmlic import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # name -> overrides of the digits config that select the recipe and what it needs
    "standard/linear": ["--recipe.name=standard", "--model.head=linear"],
    "standard/label_attention": ["--recipe.name=standard", "--model.head=label_attention"],
    "mulcon/label_attention": ["--recipe.name=mulcon", "--model.head=label_attention"],
}
SAME_FOR_ALL = ["--data.backend=torch", "--train.log_every=50"]  # the PyTorch backend repeats exactly


def tiny_digits(out: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_shards.py"), "--data", "digits",
                    "--out", str(out), "--digits-train", "256", "--digits-val", "96", "--digits-size", "32"],
                   check=True, capture_output=True)  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows among: {', '.join(ROWS)}")
    p.add_argument("--quick", action="store_true", help="tiny generated digits set, one epoch, 32 px")
    args, overrides = p.parse_known_args()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    work = Path(tempfile.mkdtemp(prefix="fastmlic-recipes-"))
    budget = ["--train.epochs=3"]
    if args.quick:
        budget = ["--train.epochs=1", "--data.image_size=32", "--data.batch_size=32", "--data.workers=0",
                  "--model.embed_dim=64", f"--data.shards={tiny_digits(work / 'shards')}"]  # fmt: skip
    results = []
    for name in rows:
        start = time.perf_counter()
        run = ["--cfg", "digits", f"--train.out_dir={work}", f"--train.name={name.replace('/', '-')}"]
        summary = train.main([*run, *SAME_FOR_ALL, *budget, *ROWS[name], *overrides])
        results.append({"row": name, "best_mAP": f"{summary['best']['mAP']:.4f}",
                        "raw_mAP": f"{summary['best_raw_mAP']:.4f}",
                        "ema_mAP": f"{summary['best_ema_mAP']:.4f}",
                        "epochs": summary["epochs"], "images_per_s": summary["images_per_s"],
                        "wall_s": time.perf_counter() - start})  # fmt: skip
    env = environment()
    print(f"\ndigits, {' '.join(budget + overrides)}; {env['device']}, {env['cpus']} CPUs")
    columns = ["row", "best_mAP", "raw_mAP", "ema_mAP", "epochs", "images_per_s", "wall_s"]
    print(markdown_table(results, columns))
    print(f"results: {write_jsonl('recipes', [{**r, 'budget': budget + overrides} for r in results], env)}")


if __name__ == "__main__":
    main()
