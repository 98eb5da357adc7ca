"""What every benchmark shares: timing statistics, environment facts, the Markdown table and JSON lines."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import subprocess
import sys
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
    """Append one JSON line per row, each carrying the environment, to benchmarks/results/NAME-DATE.jsonl."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{env['date'][:10]}.jsonl"
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({**row, **env}) + "\n")
    return path
