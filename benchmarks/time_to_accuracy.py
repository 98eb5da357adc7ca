#!/usr/bin/env python
"""Time to accuracy: fastmlic's trainer beside an ASL-style script (benchmarks/asl_style.py), one after the
other in one run, on the same shards with the same preset's settings. The wall clock starts when each
process is launched, so start-up, data loading, evaluation and checkpoints all count. The clock is read
as each epoch's line is printed.

Per side: the best mAP (the better of raw and EMA weights over the epochs) and the wall time to it;
then the wall time fastmlic needs to reach the script's best mAP (within --tolerance), and the ratio
to the script's own time. The issue's target is a ratio >= 1.5 at a best mAP no lower than the script's
by more than 0.003.

    python benchmarks/time_to_accuracy.py --data.shards=shards                   # digits, 5 epochs
    python benchmarks/time_to_accuracy.py --data.shards=shards --ours=--train.amp=off  # an fp32 row too
"""

from __future__ import annotations

import argparse
import atexit
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import environment, markdown_table, write_jsonl  # noqa: E402
from fastmlic.precision import cpu_bf16, cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .*?mAP raw ([\d.]+)\s+ema ([\d.]+)")


def timed_run(name: str, command: list[str]) -> dict:
    """Run `command`, echoing it, and stamp each epoch line with the seconds since the launch."""
    start = time.perf_counter()
    epochs = []
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:  # fmt: skip
        for line in proc.stdout:
            sys.stdout.write(line)
            if m := EPOCH_LINE.search(line):
                epochs.append({"epoch": int(m[1]), "mAP": max(float(m[2]), float(m[3])),
                               "wall_s": time.perf_counter() - start})  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{name}: {' '.join(command)} exited with {proc.returncode}")
    best = max(epochs, key=lambda e: e["mAP"])
    return {"row": name, "epochs": epochs, "best_mAP": best["mAP"], "wall_to_best_s": best["wall_s"],
            "wall_s": time.perf_counter() - start}  # fmt: skip


def wall_to(row: dict, target: float) -> float | None:
    return next((e["wall_s"] for e in row["epochs"] if e["mAP"] >= target), None)


def summarise(rows: list[dict], tolerance: float) -> None:
    """Each row against the script (rows[0]): the ratio of the wall times to each side's own best mAP, and
    of the wall times to the script's best mAP within `tolerance`, which both sides are held to."""
    script = rows[0]
    target = script["best_mAP"] - tolerance
    for row in rows:
        row["keeps_mAP"] = row["best_mAP"] >= target
        row["to_best_ratio"] = script["wall_to_best_s"] / row["wall_to_best_s"]
        reached, script_reached = wall_to(row, target), wall_to(script, target)
        row["wall_to_script_mAP_s"] = reached
        row["to_script_mAP_ratio"] = script_reached / reached if reached else None


def table(rows: list[dict], tolerance: float) -> str:
    def cells(r: dict) -> dict:
        reached, ratio = r["wall_to_script_mAP_s"], r["to_script_mAP_ratio"]
        return {
            "row": r["row"],
            "best mAP": f"{r['best_mAP']:.4f}",
            "s to best": f"{r['wall_to_best_s']:.0f}",
            "x to best": f"{r['to_best_ratio']:.2f}" + ("" if r["keeps_mAP"] else " (mAP lower)"),
            f"s to {rows[0]['best_mAP'] - tolerance:.4f}": "never" if reached is None else f"{reached:.0f}",
            "x to that": "-" if ratio is None else f"{ratio:.2f}",
            "wall s": f"{r['wall_s']:.0f}",
        }

    shown = [cells(r) for r in rows]
    return markdown_table(shown, list(shown[0]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="digits", help="the preset both sides train")
    p.add_argument("--tolerance", type=float, default=0.003, help="how far below the script's best mAP "
                   "a row may stop and still count as reaching it")  # fmt: skip
    p.add_argument("--ours", action="append", default=[], metavar="OVERRIDE",
                   help="one more fastmlic row with this override, as --ours=--train.amp=off (repeatable)")
    p.add_argument("--table", type=Path, metavar="JSONL", help="print the table of an earlier run's results")
    args, overrides = p.parse_known_args()
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines()]
        summarise(rows, args.tolerance)
        print(table(rows, args.tolerance))
        return
    work = Path(tempfile.mkdtemp(prefix="fastmlic-tta-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    train = [sys.executable, str(ROOT / "fastmlic" / "train.py"), "--cfg", args.cfg, *overrides,
             f"--train.out_dir={work}"]  # fmt: skip
    rows = [timed_run("asl-style script", [sys.executable, str(ROOT / "benchmarks" / "asl_style.py"),
                                            "--cfg", args.cfg, *overrides, "--out", str(work / "asl.jsonl")]),
            timed_run("fastmlic", [*train, "--train.name=defaults"])]  # fmt: skip
    rows += [timed_run(f"fastmlic {o}", [*train, o, f"--train.name=row{i}"]) for i, o in enumerate(args.ours)]
    summarise(rows, args.tolerance)
    env = {**environment(), "cpu": cpu_name(), "native_bf16": cpu_bf16() or "none"}
    print(f"\n{args.cfg} {' '.join(overrides)}; {env['cpu']} ({env['cpus']} CPUs, native bf16: "
          f"{env['native_bf16']}); the script's best mAP {rows[0]['best_mAP']:.4f}, "
          f"tolerance {args.tolerance}")  # fmt: skip
    print(table(rows, args.tolerance))
    meta = {"cfg": args.cfg, "overrides": overrides, "tolerance": args.tolerance}
    print(f"results: {write_jsonl('time_to_accuracy', [{**r, **meta} for r in rows], env)}")


if __name__ == "__main__":
    main()
