#!/usr/bin/env python
"""Every recipe side by side on the same shards, budget and seed: best mAP (raw and EMA), throughput,
peak memory and wall time per row, from the trainer itself (`fastmlic/train.py`), in one run.

    python benchmarks/recipes.py                                 # digits shards in ./shards, 3 epochs
    python benchmarks/recipes.py --epochs 5 --rows standard/linear,mulcon-stage1 --data.shards=DIR
    python benchmarks/recipes.py --quick                         # tiny digits set, one epoch (CI smoke)
    python benchmarks/recipes.py --dry-run                       # check every row's config, train nothing

A row is a config (a digits preset) with overrides; `standard/label_attention` separates a head's
effect from a recipe's, `coco/no-contrastive` and `oass/no-cuts` (OASS's network and classification
loss without the cuts' terms) a term's, `sgre/random-embeddings` the class names'.
Every row trains `--epochs` epochs from random init, except a row that continues another row's run (a
later stage), which adds its preset's epochs on top of that run: its epochs column counts only its
own. A pipeline row (`cpsd`) runs every stage of its preset (`python -m fastmlic.pipeline`: the part
teachers, then the student), each for `--epochs`; its mAP, images/s and epochs are the final run's,
its wall time and peak memory the whole pipeline's. Rows that read class-name embeddings get them
written beside the shards first. Extra `--section.key=value` arguments apply to every row.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402
from fastmlic.recipes.sgre_embeddings import embeddings_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # name -> (config, overrides, the row whose run this one continues)
    "standard/linear": ("digits", ["--model.head=linear"], None),
    "standard/label_attention": ("digits", ["--model.head=label_attention"], None),
    "mulcon-stage1": ("mulcon_stage1_digits", [], None),
    # chained here by hand (the stage-one row is a row of its own), not by the preset's first_stage
    "mulcon-stage2": ("mulcon_stage2_digits", ["--recipe.first_stage="], "mulcon-stage1"),
    "coco": ("coco_digits", [], None),
    "coco/no-contrastive": ("coco_digits", ["--recipe.weight=0"], None),  # the same head, ASL alone
    "sgre": ("sgre_digits", [], None),
    # the paper's ablation: learned class embeddings from a random start, no names
    "sgre/random-embeddings": ("sgre_digits", ["--recipe.embeddings=random"], None),
    "cpsd": ("psd_digits", [], None),  # a pipeline: K = 2 CGP + 2 DGP teachers, then the student
    # OASS (cMax, EMA teacher), with the student cutting for itself (max), and without the cuts' terms
    "oass": ("oass_digits", [], None),
    "oass/max": ("oass_digits", ["--recipe.keypoint=max"], None),
    "oass/no-cuts": ("oass_digits", ["--recipe.alpha_p=0", "--recipe.alpha_re=0"], None),
}
EMBEDDINGS = {"sgre": "minilm"}  # rows that read class-name embeddings from a file
SAME_FOR_ALL = ["--data.backend=torch", "--train.log_every=50"]  # the PyTorch backend repeats exactly


def tiny_digits(out: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_shards.py"), "--data", "digits",
                    "--out", str(out), "--digits-train", "256", "--digits-val", "96", "--digits-size", "32"],
                   check=True, capture_output=True)  # fmt: skip
    return out


def write_embeddings(shards: Path, backend: str) -> None:
    """The class-name embeddings a row reads, beside the shards, unless they are there already."""
    if not embeddings_path(shards / "digits", backend).is_file():
        subprocess.run([sys.executable, str(ROOT / "tools" / "label_embeddings.py"), "--data", "digits",
                        "--shards", str(shards), "--backend", backend], check=True)  # fmt: skip


def final_run(config: str, args: list[str]) -> Path | None:
    """The last run folder of a preset whose recipe has several stages, relative to its pipeline folder;
    None for a recipe of one run (trained by fastmlic/train.py)."""
    from fastmlic.builder import check_recipe
    from fastmlic.config import load_config
    from fastmlic.recipes.base import RECIPES

    cfg = load_config(config, args)
    check_recipe(cfg)
    stages = RECIPES.lookup(cfg.recipe.name).stages(cfg, Path())
    return stages[-1].folder if len(stages) > 1 else None


def narrow_head(config: str, args: list[str]) -> list[str]:
    """--quick's narrow head, for the heads whose width model.embed_dim sets (the others refuse it)."""
    from fastmlic.config import load_config
    from fastmlic.models import HEADS

    head = HEADS.lookup(load_config(config, args).model.head)
    return ["--model.embed_dim=64"] if "embed_dim" in head.model_keys else []


def run_row(work: Path, name: str, args: list[str]) -> dict:
    """One row in its own process (so peak memory is the row's own), read back from its run folder."""
    folder = name.replace("/", "-")
    where = [f"--train.out_dir={work}", f"--train.name={folder}"]
    config, overrides = args[1], args[2:]
    final = final_run(config, overrides)
    command = ["-m", "fastmlic.pipeline"] if final else [str(ROOT / "fastmlic" / "train.py")]
    start = time.perf_counter()
    subprocess.run([sys.executable, *command, *args, *where], check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    folder = str(Path(folder) / final) if final else folder
    rows = [json.loads(line) for line in (work / folder / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    raw = max(r["raw_mAP"] for r in epochs)
    ema = max((r["ema_mAP"] for r in epochs if "ema_mAP" in r), default=float("nan"))
    # best: what the run keeps in best.pt, which train.select_from may restrict to raw or EMA weights
    select_from = yaml.safe_load((work / folder / "config.yaml").read_text())["train"]["select_from"]
    best = {"raw": raw, "ema": ema}.get(select_from, max(raw, ema if ema == ema else raw))
    return {"row": name, "best_mAP": f"{best:.4f}", "raw_mAP": f"{raw:.4f}",
            "ema_mAP": f"{ema:.4f}", "epochs": len(epochs), "images_per_s": epochs[-1]["images_per_s"],
            "peak_memory_mb": round(max(r["peak_memory_mb"] for r in epochs)), "wall_s": seconds}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows among: {', '.join(ROWS)}")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every row that starts from random init")
    p.add_argument("--quick", action="store_true", help="tiny generated digits set, one epoch, 32 px, 2 jobs")
    p.add_argument("--jobs", type=int, help="rows trained at once (default 1: each row's speed and memory "
                   "are its own; --quick runs 2, whose figures are not for reading)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="load every row's config (overrides, head and "
                   "recipe checked as its run checks them), print its command, train nothing")  # fmt: skip
    args, overrides = p.parse_known_args()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    work = Path(tempfile.mkdtemp(prefix="fastmlic-recipes-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # its run folders hold gigabytes of checkpoints
    epochs, budget = args.epochs, []
    if args.quick:
        epochs = 1
        budget = ["--data.image_size=32", "--data.batch_size=32", "--data.workers=0",
                  f"--data.shards={work / 'shards'}"]  # fmt: skip
    commands, chains = {}, {}  # a row that continues another runs after it, in its chain
    for name in rows:
        config, row_args, continues = ROWS[name]
        if continues and continues not in rows:
            p.error(f"row {name} continues row {continues}: list both")
        if continues:
            start_from = [f"--train.init_from={work / continues.replace('/', '-') / 'last.pt'}"]
        else:
            start_from = [f"--train.epochs={epochs}"]
        row_budget = budget + (narrow_head(config, row_args) if args.quick else [])
        commands[name] = ["--cfg", config, *SAME_FOR_ALL, *row_budget, *row_args, *start_from, *overrides]
        chains.setdefault(continues or name, []).append(name)
    if args.dry_run:
        for name in rows:
            try:
                final_run(commands[name][1], commands[name][2:])  # loads the config as the row's run would
            except ValueError as e:  # ConfigError among them
                p.error(f"row {name}: {e}")
            print(f"{name}: {' '.join(commands[name])}")
        print(f"{len(rows)} rows checked, none trained")
        return
    if args.quick:
        tiny_digits(work / "shards")
    given = [a.split("=", 1)[1] for a in budget + overrides if a.startswith("--data.shards=")]
    for backend in sorted({EMBEDDINGS[r] for r in rows if r in EMBEDDINGS}):
        write_embeddings(Path(given[-1] if given else "shards"), backend)
    with ThreadPoolExecutor(args.jobs or (2 if args.quick else 1)) as pool:
        done = pool.map(lambda chain: {n: run_row(work, n, commands[n]) for n in chain}, chains.values())
        by_name = {k: v for chain in done for k, v in chain.items()}
    results = [by_name[name] for name in rows]
    env = environment()
    memory = "GPU memory allocated" if not env["device"].startswith("cpu") else "process RSS"
    print(f"\ndigits, {epochs} epochs {' '.join(budget + overrides)}; {env['device']}, {env['cpus']} CPUs; "
          f"peak memory: {memory}")
    columns = ["row", "best_mAP", "raw_mAP", "ema_mAP", "epochs", "images_per_s", "peak_memory_mb", "wall_s"]
    print(markdown_table(results, columns))
    rows_out = [{**r, "epochs_budget": epochs, "args": budget + overrides} for r in results]
    print(f"results: {write_jsonl('recipes', rows_out, env)}")


if __name__ == "__main__":
    main()
