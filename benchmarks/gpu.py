#!/usr/bin/env python
"""Everything a GPU machine should measure, in one command and one results folder:

    python benchmarks/gpu.py --out DIR            # on the GPU machine, about 8 minutes
    python benchmarks/gpu.py --quick              # the same sections on this CPU in under a minute (CI)
    python benchmarks/gpu.py --only "gpu tests,loss kernels bf16" --no-install   # again, after a fix

It needs only what that machine has (torch, torchvision, triton, timm, scikit-learn; no DALI, no
webdataset, no network): it installs this checkout without dependencies, then runs, each in its own
process under a share of the time budget, so a failure or a timeout costs one section only:

1. ceilings: device, versions, copy bandwidth, bf16 and TF32 matmul rates, exp2 rate;
2. the GPU tests (`pytest -m gpu`): the kernels compiled on CUDA against float64, no host sync;
3. benchmarks/loss_kernels.py in bf16 and fp32: Triton beside eager, torch.compile and the floor;
4. VOC/COCO-sized JPEG shards on local disk, then the input side without DALI: nvJPEG decode on the
   GPU (torchvision) beside Pillow decode and the training augmentations in DataLoader workers on
   every core (benchmarks/pipeline.py);
5. benchmarks/train_throughput.py: ResNet-50 at 224 and ResNet-101 at 448, channels-last bf16, eager
   then compiled, the compute ceiling beside the full trainer on the PyTorch data backend.

The order puts what the targets need first: the fp32 loss kernels and the compiled trainer rows run
after the eager ones, so a budget that runs short leaves those out (results.md says "not run").

DIR gets results.md (every section's tables, statuses and times, and the input rates beside the
step rates) and the benchmarks' JSON lines. DALI cannot be installed on that machine (its wheel is
too large to carry), so its rows are not measured; results.md says so.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ASL_SHAPES = "256x80,1024x500,16384x9605"
SUPCON_SHAPES = "16384x128,65536x128"
MODELS = [("resnet50", 224, 128), ("resnet101", 448, 64)]  # backbone, image side, batch


@dataclass
class Section:
    name: str
    command: list[str]
    cap_s: float  # at most this share of the budget
    status: str = "not run"
    seconds: float = 0.0
    output: str = ""
    needs: list[str] = field(default_factory=list)  # sections that must have passed first


def plan(args, shards: Path) -> list[Section]:
    py = sys.executable
    cpu = args.quick
    tests = [py, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    if not cpu and _installed("xdist"):  # the tests' time is Triton compiling ~170 variants, one at a time
        tests += ["-n", str(min(8, max(1, (os.cpu_count() or 2) // 2)))]  # per process: in parallel
    sections = [Section("ceilings", [py, str(BENCH / "ceilings.py")], 60), Section("gpu tests", tests, 200)]
    shapes = ["--asl-shapes", ASL_SHAPES, "--supcon-shapes", SUPCON_SHAPES]
    shapes = ["--quick", "--no-compile"] if cpu else shapes

    def loss_kernels(dtype: str, cap: float) -> Section:
        command = [py, str(BENCH / "loss_kernels.py"), "--dtype", dtype, *shapes]
        return Section(f"loss kernels {dtype}", command, cap)

    sections.append(loss_kernels("bf16", 110))  # the training dtype; on the CPU one is enough
    workers = str(os.cpu_count() or 1)
    side, batch = ("32", "16") if cpu else ("224", "128")
    command = [py, str(BENCH / "pipeline.py"), "--split", str(shards / "vg500" / "train.json"), "--device",
               "cpu" if cpu else "gpu", "--workers", workers, "--image-size", side, "--batch-size", batch,
               "--passes", "1" if cpu else "2"]  # fmt: skip
    sections.append(Section("input side", command, 90, needs=["shards"]))
    models = [("resnet10t", 32, 16)] if cpu else MODELS
    steps = ["--steps", "3", "--repeats", "1"] if cpu else ["--steps", "20", "--repeats", "3"]
    for compiled in (False,) if cpu else (False, True):
        if compiled:  # after the eager trainer rows: what the targets need least, where a short budget cuts
            sections.append(loss_kernels("fp32", 90))
        for backbone, size, batch_size in models:
            name = f"train {backbone} {size}px {'compiled' if compiled else 'eager'}"
            command = [py, str(BENCH / "train_throughput.py"), "--cfg", "vg500", *steps,
                       f"--data.shards={shards}", f"--model.backbone={backbone}", f"--data.image_size={size}",
                       f"--data.batch_size={batch_size}", "--data.backend=torch", f"--data.workers={workers}",
                       "--train.amp=bf16", f"--train.compile={str(compiled).lower()}"]  # fmt: skip
            sections.append(Section(name, command, 150 if compiled else 100, needs=["shards"]))
    return sections


def run_section(section: Section, timeout: float, env: dict) -> None:
    started = time.monotonic()
    try:
        done = subprocess.run(section.command, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)  # fmt: skip
        errors = f"\n[stderr, last lines]\n{_tail(done.stderr, 60)}" if done.returncode else ""
        section.output = done.stdout + errors
        section.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        # the benchmarks print a line per measured row on stderr: enough to keep every row so far
        section.output = out + f"\n[stderr, last lines]\n{_tail(err, 100)}"
        section.status = f"timed out after {timeout:.0f} s"
    section.seconds = time.monotonic() - started


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def install(env: dict) -> Section:
    """This checkout, editable, without dependencies or an index (the machine has no network)."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--no-index", "-e", str(ROOT)]  # fmt: skip
    s = Section("install", command, 120)
    run_section(s, s.cap_s, env)
    return s


def make_shards(shards: Path, images: int) -> Section:
    """Realistic JPEGs (500x375 to 640x480) as VG500-layout shards on local disk."""
    s = Section("shards", [], 120)
    started = time.monotonic()
    try:
        sys.path.insert(0, str(ROOT))
        from benchmarks.pipeline import generated_split

        generated_split(shards.parent, images, splits=("train", "test"), workers=os.cpu_count() or 1)
        s.status, s.output = "ok", f"{images} JPEGs in {shards}"
    except Exception as e:  # noqa: BLE001  (reported in results.md, the other sections go on)
        s.status, s.output = f"failed: {type(e).__name__}: {e}", ""
    s.seconds = time.monotonic() - started
    return s


def input_beside_steps(out: Path) -> list[str]:
    """The input rates each loader can feed beside the training steps' rates, from the JSON lines."""

    def rows(name):
        paths = out.glob(f"{name}-*.jsonl")
        return [json.loads(line) for path in paths for line in path.read_text().splitlines()]

    feeds = [(r["provider"], r["images/s"]) for r in rows("pipeline") if "images/s" in r]
    steps = [(f"{r['backbone']} {r['image_size']} px, {r['provider']}", r["images/s"])
             for r in rows("train_throughput")]  # fmt: skip
    if not feeds or not steps:
        return []
    lines = ["| input (images/s it can feed) | | training step | images/s |", "|---|---|---|---|"]
    for i in range(max(len(feeds), len(steps))):
        f = feeds[i] if i < len(feeds) else ("", "")
        t = steps[i] if i < len(steps) else ("", "")
        lines.append(f"| {f[0]} | {_num(f[1])} | {t[0]} | {_num(t[1])} |")
    return lines


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _num(v) -> str:
    return f"{v:,.0f}" if isinstance(v, float | int) else str(v)


def write_results(out: Path, sections: list[Section], budget: float, quick: bool) -> Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    dali = "DALI rows are measured beside the others."
    if not _installed("nvidia.dali"):
        dali = "DALI is not installed on this machine (its wheel is too large to carry): no DALI rows."
    lines = [f"# benchmarks/gpu.py{' --quick' if quick else ''}, {now:%Y-%m-%d %H:%M} UTC", "",
             f"Time budget {budget:.0f} s. {dali}", "", "| section | status | seconds |",
             "|---|---|---|"]  # fmt: skip
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in sections]
    beside = input_beside_steps(out)
    if beside:
        lines += ["", "## Input rates beside the training steps", "", *beside]
    for s in sections:
        lines += ["", f"## {s.name}: {s.status}", "", "```", s.output.strip() or "(no output)", "```"]
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def chosen(sections: list[Section], only: str, parser: argparse.ArgumentParser) -> list[Section]:
    """The sections whose names start with one of `only`'s comma-separated names."""
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = ", ".join(s.name for s in sections)
    for name in names:
        if not any(s.name.startswith(name) for s in sections):
            parser.error(f"--only {name!r} names no section; the sections: {known}")
    return [s for s in sections if any(s.name.startswith(n) for n in names)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/gpu-DATE-TIME)")
    p.add_argument("--quick", action="store_true", help="small shapes on the CPU, no install: what CI runs")
    p.add_argument("--budget-s", type=float, help="time for all sections (default 480, --quick 150)")
    p.add_argument("--images", type=int, help="generated JPEGs (default 3072, --quick 48)")
    p.add_argument("--no-install", action="store_true", help="the project is installed already")
    p.add_argument("--only", metavar="NAMES",
                   help="comma-separated section names or their starts (e.g. 'gpu tests,loss'): run only "
                        "these, to measure again what a fix changed")  # fmt: skip
    args = p.parse_args(argv)
    budget = args.budget_s or (150 if args.quick else 480)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = (args.out or BENCH / "results" / f"gpu-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FASTMLIC_RESULTS_DIR": str(out), "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)  # the kernels are compiled on a GPU, and checked as such
    deadline = time.monotonic() + budget
    done: list[Section] = []
    if not (args.quick or args.no_install):
        done.append(install(env))
    with tempfile.TemporaryDirectory(prefix="fastmlic-gpu-") as tmp:
        shards = Path(tmp) / "shards"
        sections = plan(args, shards)
        if args.only:
            sections = chosen(sections, args.only, p)
        for section in sections:
            made = any(d.name == "shards" for d in done)
            if section.needs and not made and deadline - time.monotonic() > 15:
                done.append(make_shards(shards, args.images or (48 if args.quick else 3072)))
            left = deadline - time.monotonic()
            if left < 15:
                section.status = "not run: out of time"
            elif any(d.name in section.needs and d.status != "ok" for d in done):
                section.status = "not run: " + ", ".join(section.needs) + " failed"
            else:
                print(f"{section.name} (up to {min(section.cap_s, left):.0f} s) ...", flush=True)
                run_section(section, min(section.cap_s, left), env)
                print(f"  {section.status} in {section.seconds:.0f} s", flush=True)
            done.append(section)
        path = write_results(out, done, budget, args.quick)
    print(f"results: {path}")
    for s in done:
        print(f"  {s.name:36} {s.status:28} {s.seconds:5.0f} s")
    return 0 if all(s.status == "ok" for s in done if not s.status.startswith("not run")) else 1


if __name__ == "__main__":
    sys.exit(main())
