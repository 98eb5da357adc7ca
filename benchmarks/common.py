"""What every benchmark shares: timing statistics, environment facts, the Markdown table and JSON lines."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"


def percentiles(seconds: list[float]) -> dict[str, float]:
    """Median with the 20th and 80th percentiles, in milliseconds."""
    p20, p50, p80 = np.percentile(np.asarray(seconds) * 1e3, [20, 50, 80])
    return {"median_ms": float(p50), "p20_ms": float(p20), "p80_ms": float(p80)}


def environment() -> dict[str, str]:
    """Device, library versions, commit and the exact command: what a result row needs to be trusted."""
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu: {platform.processor() or 'x86_64'}"
    )
    import os

    return {
        "device": device,
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit + ("+dirty" if dirty else ""),
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_jsonl(name: str, rows: list[dict], env: dict) -> Path:
    """Append one JSON line per row, each carrying the environment, to NAME-DATE.jsonl in
    benchmarks/results/ (or in $FASTMLIC_RESULTS_DIR, where benchmarks/gpu.py gathers one run's files)."""
    folder = Path(os.environ.get("FASTMLIC_RESULTS_DIR") or RESULTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{env['date'][:10]}.jsonl"
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({**row, **env}) + "\n")
    return path


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak memory `fn` adds: the CUDA allocator's peak on GPU; on CPU, resident memory sampled every 0.2 ms
    (torch keeps no CPU allocator statistics; short-lived peaks between samples can be missed)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_bytes(), base) - base  # freed pages can take RSS below the start


def time_ms(fn: Callable[[], object], device: str, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median, p20 and p80 of `fn` in ms: triton.testing.do_bench on GPU, a synchronous loop on CPU."""
    if device == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=200)
        return {"median_ms": p50, "p20_ms": p20, "p80_ms": p80}
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return percentiles(times)
