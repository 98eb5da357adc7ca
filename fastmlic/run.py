"""A run folder: the resolved config, a JSON-lines metrics log, a text log and checkpoints, written
by rank 0 only and atomically (a crash or a full disk never leaves a half-written file behind). Which
checkpoints are written, kept and resumed from is fastmlic/checkpointer.py's.

    RUN/config.yaml           the resolved config (what --resume checks the command line against)
    RUN/metrics.jsonl         one JSON object per logged step and per epoch; rewound on resume
    RUN/log.txt               what was printed, warnings and errors included
    RUN/checkpoints/step-*.pt full training states, mid-epoch and end-of-epoch; the newest K are kept
    RUN/last.pt               the newest end-of-epoch state (a hard link to its step file)
    RUN/epochs/epoch-N.pt     the end-of-epoch states of train.keep_epochs, kept
    RUN/best.pt               the best weights by headline mAP, raw or EMA (the file says which)
    RUN/summary.json          the end-of-invocation summary; `finished` is false after train.stop_after
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
import yaml

from .errors import UserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "log.txt", "last.pt", "best.pt", "summary.json", "checkpoints")


class RunFolderError(UserError):
    """The run folder cannot be used or written; the message names the path and the cause."""


def read_summary(path: Path) -> dict | None:
    """RUN/summary.json, or None before a run has written one."""
    summary = path / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def finished(path: Path) -> bool:
    """Whether RUN trained all its epochs (or stopped early by design): its summary.json says so."""
    summary = read_summary(path)
    return bool(summary and summary.get("finished"))


def resumable(path: Path) -> bool:
    """Whether RUN holds a training state to continue from."""
    return (path / "last.pt").is_file() or any((path / "checkpoints").glob("step-*.pt"))


def epoch_state(run: Path, epoch: int) -> Path:
    """Where `train.keep_epochs` keeps the state at the end of `epoch` (1-based, as epochs are counted)."""
    return run / "epochs" / f"epoch-{epoch:03d}.pt"


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write to a hidden temporary file beside `path`, flush it to disk, then rename it into place: the
    old file stays until the new one is complete, and on any failure no temporary file remains."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RunFolderError(describe_os_error(path, e)) from None


def describe_os_error(path: Path, e: OSError) -> str:
    cause = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        free = shutil.disk_usage(path.parent).free / 2**20 if path.parent.exists() else 0
        cause += f" ({free:.0f} MB free there; free space or point train.out_dir elsewhere)"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause += " (the folder is not writable; point train.out_dir at a writable folder)"
    return f"cannot write {path}: {cause}"


class RunDir:
    def __init__(self, path: Path, is_main: bool, rank: int = 0):
        self.path, self.is_main, self.rank = Path(path), is_main, rank
        self._tb = None
        self._pending: list[str] = []  # log lines from before the folder exists
        self._ready = False

    @staticmethod
    def default_name(dataset: str, backbone: str) -> str:
        return f"{dataset}-{backbone}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"

    # ------------------------------------------------------------------ creating and resuming

    def create(self, config: dict) -> None:
        """A new run: refused in a folder that holds another run's files, whatever state they are in."""
        if self.is_main:
            found = [n for n in RUN_FILES if (self.path / n).exists()]
            if found:
                todo = (f"continue it with --resume {self.path}" if resumable(self.path) else
                        "it has no checkpoint to resume from")  # fmt: skip
                raise RunFolderError(
                    f"{self.path} holds another run ({', '.join(found)}); {todo}, or start this one under "
                    f"another --train.name (or delete that folder)"
                )
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunFolderError(f"cannot create run folder {self.path}: {e.strerror}") from None
            self.write_config(config)
        self._open()

    def write_config(self, config: dict) -> None:
        if self.is_main:
            write_atomically(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    def reopen(self) -> None:
        """An existing run continues (`--resume`): the log appends to its log.txt."""
        self._open()

    def _open(self) -> None:
        self._ready = True
        for line in self._pending:
            self._append("log.txt", line)
        self._pending.clear()

    # ------------------------------------------------------------------ logs

    def log(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)
            if self._ready:
                self._append("log.txt", text)
            else:
                self._pending.append(text)

    def discard(self) -> None:
        """A new run that failed before its first step: its folder goes, so the same command may run
        again (a folder left behind would be refused as another run's)."""
        if self.is_main and self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
            print(f"removed {self.path}: the run stopped before its first step, so the same command can run "
                  "again", file=sys.stderr, flush=True)  # fmt: skip
        self._ready = False

    def log_error(self, text: str) -> None:
        """Errors reach log.txt from any rank (a line each; appends of one line do not interleave)."""
        line = f"error (rank {self.rank}): {text}" if self.rank else f"error: {text}"
        if self._ready:
            with contextlib.suppress(OSError):
                self._append("log.txt", line)

    @contextlib.contextmanager
    def capture_warnings(self):
        """Warnings are shown as usual and also written to log.txt (rank 0)."""
        show = warnings.showwarning

        def also_log(message, category, filename, lineno, file=None, line=None):
            show(message, category, filename, lineno, file, line)
            if self.is_main and self._ready:
                with contextlib.suppress(OSError):
                    self._append("log.txt", f"warning: {category.__name__}: {message}")

        warnings.showwarning = also_log
        try:
            yield
        finally:
            warnings.showwarning = show

    def record(self, row: dict) -> None:
        if self.is_main:
            self._append("metrics.jsonl", json.dumps(row))
            if self._tb is not None:
                step = row.get("step", 0)
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                        self._tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, step)

    def rewind_metrics(self, step: int, epochs: int) -> int:
        """Drop the rows an interrupted attempt wrote after the checkpoint being resumed (step rows past
        `step`, epoch rows past `epochs` finished epochs), so each step is recorded once. Returns how
        many rows were dropped."""
        path = self.path / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return 0
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        keep = [line for line in rows if _before(json.loads(line), step, epochs)]
        if len(keep) < len(rows):
            write_atomically(path, "".join(line + "\n" for line in keep).encode())
        return len(rows) - len(keep)

    def enable_tensorboard(self) -> None:
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter  # only imported when asked for

            self._tb = SummaryWriter(str(self.path / "tensorboard"))

    # ------------------------------------------------------------------ files

    def save(self, name: str, state: dict) -> Path:
        """torch.save into the run folder, atomically. The state is serialised in memory first, so a
        full disk is an OSError with its errno (torch's own writer reports it as 'unexpected pos')."""
        path = self.path / name
        if self.is_main:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, buffer.getbuffer())
        return path

    # ------------------------------------------------------------------ small files

    def write_json(self, name: str, data: dict) -> Path:
        path = self.path / name
        if self.is_main:
            write_atomically(path, (json.dumps(data, indent=1) + "\n").encode())
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def _append(self, name: str, line: str) -> None:
        path = self.path / name
        try:
            with open(path, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            raise RunFolderError(describe_os_error(path, e)) from None


def _before(row: dict, step: int, epochs: int) -> bool:
    if row.get("kind") == "epoch":
        return row.get("epoch", 0) <= epochs
    return row.get("step", 0) <= step
