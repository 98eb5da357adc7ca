"""A run folder: the resolved config, a JSON-lines metrics log, a text log and checkpoints, written
by rank 0 only and atomically (a crash or a full disk never leaves a half-written file behind).

    RUN/config.yaml           the resolved config (what --resume checks the command line against)
    RUN/metrics.jsonl         one JSON object per logged step and per epoch; rewound on resume
    RUN/log.txt               what was printed, warnings and errors included
    RUN/checkpoints/step-*.pt full training states, mid-epoch and end-of-epoch; the newest K are kept
    RUN/last.pt               the newest end-of-epoch state (a hard link to its step file)
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
import warnings
from pathlib import Path

import torch
import yaml

from .checkpoint import Checkpoint, load_checkpoint
from .errors import InputError, MissingInput, UserError

# keys that may differ on --resume: they change how the job runs, not what it computes
OPERATIONAL_KEYS = {
    "data.workers", "train.stop_after", "train.log_every", "train.tensorboard", "train.name",
    "train.checkpoint_every_steps", "train.checkpoint_every_minutes", "train.keep_checkpoints",
    "train.dist_timeout_minutes",
}  # fmt: skip
# keys that may differ on --resume under a condition the trainer checks once the data is open
CHECKED_KEYS = {"train.epochs": "larger than the run's", "data.shards": "the same splits (classes, sizes)"}
RUN_FILES = ("config.yaml", "metrics.jsonl", "log.txt", "last.pt", "best.pt", "summary.json", "checkpoints")


class RunFolderError(UserError):
    """The run folder cannot be used or written; the message names the path and the cause."""


def resumable(path: Path) -> bool:
    """Whether RUN holds a training state to continue from."""
    return (path / "last.pt").is_file() or any((path / "checkpoints").glob("step-*.pt"))


def _write_atomically(path: Path, data: bytes | memoryview) -> None:
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
        raise RunFolderError(_describe_os_error(path, e)) from None


def _describe_os_error(path: Path, e: OSError) -> str:
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

    def check_resume(self, config: dict) -> list[str]:
        """Stops with the differing keys when the command line asks for another run than RUN holds.
        Returns the keys whose change the trainer must still check (CHECKED_KEYS), as 'section.key'."""
        if not resumable(self.path):
            raise MissingInput(f"--resume {self.path}: no checkpoint there (nothing to resume)")
        saved = yaml.safe_load((self.path / "config.yaml").read_text())
        changed = {f"{s}.{k}": (saved.get(s, {}).get(k), v) for s, section in config.items()
                   for k, v in section.items() if saved.get(s, {}).get(k) != v}  # fmt: skip
        refused = [f"{key}: run has {old!r}, command line gives {new!r}"
                   for key, (old, new) in changed.items()
                   if key not in OPERATIONAL_KEYS and key not in CHECKED_KEYS]  # fmt: skip
        if refused:
            may = sorted(OPERATIONAL_KEYS) + [f"{k} ({why})" for k, why in CHECKED_KEYS.items()]
            raise InputError(f"--resume {self.path}: the config differs from the run's config.yaml:\n  "
                             + "\n  ".join(refused)
                             + "\nkeys that may change on resume: " + ", ".join(may))  # fmt: skip
        self._open()
        return [key for key in changed if key in CHECKED_KEYS]

    def write_config(self, config: dict) -> None:
        if self.is_main:
            _write_atomically(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

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
            _write_atomically(path, "".join(line + "\n" for line in keep).encode())
        return len(rows) - len(keep)

    def enable_tensorboard(self) -> None:
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter  # only imported when asked for

            self._tb = SummaryWriter(str(self.path / "tensorboard"))

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str, state: dict) -> Path:
        """torch.save into the run folder, atomically. The state is serialised in memory first, so a
        full disk is an OSError with its errno (torch's own writer reports it as 'unexpected pos')."""
        path = self.path / name
        if self.is_main:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, buffer.getbuffer())
        return path

    def save_training_state(self, state: dict, step: int, end_of_epoch: bool, keep: int) -> Path:
        """checkpoints/step-N.pt, then the oldest beyond the newest `keep` are deleted; at the end of an
        epoch last.pt becomes that file too (a hard link: no second copy on disk)."""
        path = self.save(f"checkpoints/step-{step:08d}.pt", state)
        if not self.is_main:
            return path
        if end_of_epoch:
            link = self.path / ".last.pt.link"
            try:
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                try:
                    os.link(path, link)
                except OSError:  # a filesystem without hard links: a copy
                    shutil.copyfile(path, link)
                os.replace(link, self.path / "last.pt")
            except OSError as e:
                with contextlib.suppress(OSError):
                    link.unlink()
                raise RunFolderError(_describe_os_error(self.path / "last.pt", e)) from None
        for old in self.training_states()[keep:]:
            with contextlib.suppress(OSError):
                old.unlink()
        return path

    def training_states(self) -> list[Path]:
        """The step checkpoints, newest first."""
        return sorted((self.path / "checkpoints").glob("step-*.pt"), reverse=True)

    def load_training_state(self) -> tuple[Checkpoint, Path]:
        """The newest training state that reads; each one that does not is reported by name and the
        next older one is tried (last.pt last: it is also one of the step files unless rotated out)."""
        for leftover in [*self.path.glob(".*.tmp*"), *(self.path / "checkpoints").glob(".*.tmp*")]:
            leftover.unlink()  # a save the interrupted process did not finish
            self.log(f"removed {leftover.name}: an unfinished save of the interrupted attempt")
        failures = []
        for path in [*self.training_states(), self.path / "last.pt"]:
            if not path.is_file():
                continue
            try:
                ckpt = load_checkpoint(path)
            except ValueError as e:
                failures.append(str(e))
                continue
            if ckpt.kind != "last":
                failures.append(f"{path}: a {ckpt.kind} checkpoint, not a training state")
                continue
            for failure in failures:
                self.log(f"warning: skipped an unreadable checkpoint: {failure}")
            return ckpt, path
        raise InputError(f"--resume {self.path}: no readable checkpoint:\n  " + "\n  ".join(failures))

    # ------------------------------------------------------------------ small files

    def write_json(self, name: str, data: dict) -> Path:
        path = self.path / name
        if self.is_main:
            _write_atomically(path, (json.dumps(data, indent=1) + "\n").encode())
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
            raise RunFolderError(_describe_os_error(path, e)) from None


def _before(row: dict, step: int, epochs: int) -> bool:
    if row.get("kind") == "epoch":
        return row.get("epoch", 0) <= epochs
    return row.get("step", 0) <= step
