"""A run folder: the resolved config, a JSON-lines metrics log, a text log and checkpoints, written
by rank 0 only and atomically (a crash never leaves a half-written checkpoint).

    RUN/config.yaml     the resolved config (what --resume checks the command line against)
    RUN/metrics.jsonl   one JSON object per logged step and per epoch
    RUN/log.txt         what was printed
    RUN/last.pt         full training state after the last finished epoch (for --resume)
    RUN/best.pt         the best weights by headline mAP, raw or EMA (the file says which)
    RUN/summary.json    the end-of-invocation summary; `finished` is false after train.stop_after
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import torch
import yaml

# keys that may differ on --resume: they change how the job runs, not what it computes
OPERATIONAL_KEYS = {"data.workers", "train.stop_after", "train.log_every", "train.tensorboard", "train.name"}


class RunDir:
    def __init__(self, path: Path, is_main: bool):
        self.path, self.is_main = Path(path), is_main
        self._tb = None

    @staticmethod
    def default_name(dataset: str, backbone: str) -> str:
        return f"{dataset}-{backbone}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"

    def create(self, config: dict) -> None:
        if self.is_main:
            if (self.path / "last.pt").exists():
                raise FileExistsError(
                    f"{self.path} holds a run already; continue it with --resume {self.path}"
                )
            self.path.mkdir(parents=True, exist_ok=True)
            self._write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    def check_resume(self, config: dict) -> None:
        """Stops with the differing keys when the command line asks for another run than RUN holds."""
        saved_path = self.path / "config.yaml"
        if not (self.path / "last.pt").is_file():
            raise FileNotFoundError(f"--resume {self.path}: no last.pt there (nothing to resume)")
        saved = yaml.safe_load(saved_path.read_text())
        diffs = [
            f"{s}.{k}: run has {saved.get(s, {}).get(k)!r}, command line gives {v!r}"
            for s, section in config.items()
            for k, v in section.items()
            if f"{s}.{k}" not in OPERATIONAL_KEYS and saved.get(s, {}).get(k) != v
        ]
        if diffs:
            raise ValueError(f"--resume {self.path}: the config differs from the run's config.yaml:\n  "
                             + "\n  ".join(diffs))  # fmt: skip

    def log(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)
            with open(self.path / "log.txt", "a") as f:
                f.write(text + "\n")

    def record(self, row: dict) -> None:
        if self.is_main:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if self._tb is not None:
                step = row.get("step", 0)
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                        self._tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, step)

    def enable_tensorboard(self) -> None:
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter  # only imported when asked for

            self._tb = SummaryWriter(str(self.path / "tensorboard"))

    def save(self, name: str, state: dict) -> Path:
        path = self.path / name
        if self.is_main:
            tmp = path.with_name(f".{name}.tmp{os.getpid()}")
            torch.save(state, tmp)
            os.replace(tmp, path)
        return path

    def write_json(self, name: str, data: dict) -> Path:
        path = self.path / name
        if self.is_main:
            self._write(path, (json.dumps(data, indent=1) + "\n").encode())
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
