"""Training states on disk: what a checkpoint holds, when one is due, where it goes, which are kept, and
what `--resume` may change and loads back.

    RUN/checkpoints/step-N.pt  a full training state, mid-epoch or at an epoch's end; the newest
                               `train.keep_checkpoints` are kept (an older one goes only once a newer
                               one is complete)
    RUN/last.pt                the newest end-of-epoch state: a hard link to its step file
    RUN/epochs/epoch-N.pt      the end-of-epoch states of `train.keep_epochs`, kept (hard links too)
    RUN/best.pt                the best weights by headline mAP, raw or EMA (`source` says which)

A resume loads the newest state that reads (an unreadable one is reported by name and the next older
one tried) and restores the weights, EMA, optimiser, scaler, schedule, the recipe's state, best-so-far,
and per rank the random generators and the training loader's position.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from .checkpoint import Checkpoint, TrainState, load_checkpoint, load_weights
from .config import Config
from .distributed import Dist, all_gather_objects, all_reduce_sum
from .engine import EpochProgress, TrainParts
from .errors import InputError, MissingInput
from .run import RunDir, RunFolderError, describe_os_error, epoch_state, resumable

# keys that may differ on --resume: they change how the job runs, not what it computes
OPERATIONAL_KEYS = {
    "data.workers", "train.stop_after", "train.log_every", "train.tensorboard", "train.name",
    "train.checkpoint_every_steps", "train.checkpoint_every_minutes", "train.keep_checkpoints",
    "train.dist_timeout_minutes",
}  # fmt: skip
# keys that may differ on --resume under a condition checked once the data is open
CHECKED_KEYS = {"train.epochs": "larger than the run's", "data.shards": "the same splits (classes, sizes)"}


def remove_unfinished_saves(path: Path) -> list[Path]:
    """Removes the temporary files of saves an interrupted process did not finish (run.write_atomically's)
    in RUN and its checkpoints/; returns them."""
    found = [*path.glob(".*.tmp*"), *(path / "checkpoints").glob(".*.tmp*")]
    for leftover in found:
        leftover.unlink()
    return found


def nothing_to_resume(path: Path) -> str:
    """Why RUN cannot be resumed and what to run instead, once its unfinished saves are removed."""
    removed = remove_unfinished_saves(path)
    said = f"--resume {path}: no checkpoint there (nothing to resume)"
    if removed:
        said += f"; removed {', '.join(p.name for p in removed)}, a save the stopped process did not finish"
    if (path / "config.yaml").is_file():
        said += (f". The run stopped before its first checkpoint: start it again with python "
                 f"fastmlic/train.py --cfg {path / 'config.yaml'} --train.name={path.name}-again (or delete "
                 f"{path} and rerun your command)")  # fmt: skip
    return said


def check_resume(run: RunDir, config: dict) -> list[str]:
    """Stops with the differing keys when the command line asks for another run than RUN holds, before
    anything is built. Returns the changed keys whose condition `Checkpointer.restore` checks."""
    if not resumable(run.path):
        raise MissingInput(nothing_to_resume(run.path))
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    changed = {f"{s}.{k}": (saved.get(s, {}).get(k), v) for s, section in config.items()
               for k, v in section.items() if saved.get(s, {}).get(k) != v}  # fmt: skip
    refused = [f"{key}: run has {old!r}, command line gives {new!r}" for key, (old, new) in changed.items()
               if key not in OPERATIONAL_KEYS and key not in CHECKED_KEYS]  # fmt: skip
    if refused:
        may = sorted(OPERATIONAL_KEYS) + [f"{k} ({why})" for k, why in CHECKED_KEYS.items()]
        raise InputError(f"--resume {run.path}: the config differs from the run's config.yaml:\n  "
                         + "\n  ".join(refused) + "\nkeys that may change on resume: " + ", ".join(may))
    run.reopen()
    return [key for key in changed if key in CHECKED_KEYS]


def rng_states(device: torch.device) -> dict:
    """Every random generator a training step may draw from, on this process."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}  # fmt: skip


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"])


class Checkpointer:
    """Saves and restores one run's training state: its built parts (module, EMA, optimiser, schedule,
    scaler, recipe) and loaders. Collective: every rank calls `save` and `restore`; rank 0 writes."""

    def __init__(self, run: RunDir, cfg: Config, dist: Dist, classes: list[str], teachers: dict,
                 parts: TrainParts, train_loader, val_loader):  # fmt: skip
        self.run, self.cfg, self.dist, self.classes, self.teachers = run, cfg, dist, classes, teachers
        self.parts, self.train_loader, self.val_loader = parts, train_loader, val_loader
        self.saved: tuple[int, Path] | None = None  # (step, path) of the newest training state written
        self._saved_at = time.monotonic()

    # ------------------------------------------------------------------ saving

    def start_clock(self) -> None:
        """`train.checkpoint_every_minutes` counts from here (the start of training)."""
        self._saved_at = time.monotonic()

    def due(self, step: int) -> bool:
        """A mid-epoch checkpoint is due on this rank: every N steps, or M minutes by rank 0's clock (the
        ranks decide together, with the stop signals)."""
        t = self.cfg.train
        by_steps = bool(t.checkpoint_every_steps) and step % t.checkpoint_every_steps == 0
        by_time = (self.dist.is_main and bool(t.checkpoint_every_minutes)
                   and time.monotonic() - self._saved_at >= 60 * t.checkpoint_every_minutes)  # fmt: skip
        return by_steps or by_time

    def checkpoint(self, kind: str, weights: dict, **extra) -> dict:
        return Checkpoint(kind=kind, classes=self.classes, config=self.cfg.to_dict(), model=weights,
                          teachers=self.teachers, **extra).to_dict()  # fmt: skip

    def save_best(self, weights: dict, source: str, metrics: dict, state: TrainState) -> Path:
        return self.run.save("best.pt", self.checkpoint("best", weights, source=source, metrics=metrics,
                                                        state=state))  # fmt: skip

    def save(self, state: TrainState, progress: EpochProgress | None) -> Path:
        """checkpoints/step-N.pt from every rank's state (`progress`: the unfinished epoch's, if any); at
        the end of an epoch last.pt becomes that file too (a hard link: no second copy); then the oldest
        beyond the newest `train.keep_checkpoints` are deleted."""
        captured = self._capture(state, progress)
        path = self.run.save(f"checkpoints/step-{state.step:08d}.pt", captured)
        if self.dist.is_main:
            if progress is None:
                self._link(path, self.run.path / "last.pt")
                if state.epoch in self.cfg.train.keep_epochs:
                    (self.run.path / "epochs").mkdir(exist_ok=True)
                    self._link(path, epoch_state(self.run.path, state.epoch))
            for old in self.training_states()[self.cfg.train.keep_checkpoints :]:
                with contextlib.suppress(OSError):
                    old.unlink()
        self.saved, self._saved_at = (state.step, path), time.monotonic()
        return path

    def _capture(self, s: TrainState, progress: EpochProgress | None) -> dict | None:
        """Everything to continue from here, on rank 0 (None elsewhere): every rank sends its random
        generators and its loader's position."""
        p, world = self.parts, self.dist.world_size
        s.batches = progress.batches if progress else 0
        s.epoch_loss_sum = all_reduce_sum([progress.loss_sum()], world)[0] if progress else 0.0
        mine = {"rng": rng_states(self.dist.device), "loader": self.train_loader.state_dict()}
        ranks = all_gather_objects(mine, world)
        if not self.dist.is_main:
            return None
        return self.checkpoint(
            "last", p.module.state_dict(), state=s, ema=p.ema.state_dict() if p.ema is not None else None,
            optimizer=p.optimizer.state_dict(), scheduler=p.scheduler.state_dict(),
            scaler=p.scaler.state_dict() if p.scaler else None, recipe=p.recipe.state_dict(), ranks=ranks,
            data=self.split_sizes(),
        )  # fmt: skip

    @staticmethod
    def _link(path: Path, target: Path) -> None:
        """`target` becomes `path` too: a hard link, so rotating `path` away keeps the file."""
        link = target.with_name(f".{target.name}.link")
        try:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            try:
                os.link(path, link)
            except OSError:  # a filesystem without hard links: a copy
                shutil.copyfile(path, link)
            os.replace(link, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                link.unlink()
            raise RunFolderError(describe_os_error(target, e)) from None

    def split_sizes(self) -> dict[str, int]:
        """What a checkpoint records of the data, so a resume can tell moved shards from other ones."""
        return {"train": self.train_loader.info.num_samples, "val": self.val_loader.info.num_samples}

    # ------------------------------------------------------------------ resuming

    def training_states(self) -> list[Path]:
        """The step checkpoints, newest first."""
        return sorted((self.run.path / "checkpoints").glob("step-*.pt"), reverse=True)

    def newest_readable(self) -> tuple[Checkpoint, Path]:
        """The newest training state that reads; each one that does not is reported by name and the next
        older one is tried (last.pt last: it is also one of the step files unless rotated out)."""
        run = self.run
        for leftover in remove_unfinished_saves(run.path):
            run.log(f"removed {leftover.name}: an unfinished save of the interrupted attempt")
        failures = []
        for path in [*self.training_states(), run.path / "last.pt"]:
            if not path.is_file():
                continue
            try:
                ckpt = load_checkpoint(path)
            except InputError as e:
                failures.append(str(e))
                continue
            if ckpt.kind != "last":
                failures.append(f"{path}: a {ckpt.kind} checkpoint, not a training state")
                continue
            for failure in failures:
                run.log(f"warning: skipped an unreadable checkpoint: {failure}")
            return ckpt, path
        raise InputError(f"--resume {run.path}: no readable checkpoint:\n  " + "\n  ".join(failures))

    def restore(self, changed: list[str]) -> TrainState:
        """Load the newest readable training state into the built parts and loaders; `changed`: the
        keys `check_resume` let through on a condition."""
        cfg, p, run, rank = self.cfg, self.parts, self.run, self.dist.rank
        ckpt, path = self.newest_readable()
        where = f"--resume {run.path}"
        load_weights(p.module, ckpt.model, ckpt.classes, self.classes, [], f"{where} ({path.name})")
        for name, ref in ckpt.teachers.items():
            now = self.teachers.get(name, {}).get("sha256")
            if now != ref["sha256"]:
                raise InputError(f"{where}: teacher {name!r} ({ref['path']}) is not the file the run started "
                                 f"with (sha256 {ref['sha256'][:12]}, now {str(now)[:12]})")  # fmt: skip
        self._check_changes(ckpt, changed)
        p.optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.config["train"]["epochs"] == cfg.train.epochs:
            p.scheduler.load_state_dict(ckpt.scheduler)
        else:  # the schedule built for the new length, at the step reached
            p.scheduler.last_epoch = ckpt.state.step - 1
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": meant here
                warnings.simplefilter("ignore", UserWarning)
                p.scheduler.step()
        if p.ema is not None:
            p.ema.load_state_dict(ckpt.ema)
        if p.scaler is not None:
            p.scaler.load_state_dict(ckpt.scaler)
        p.recipe.load_state_dict(ckpt.recipe)
        state = ckpt.state
        if ckpt.ranks and len(ckpt.ranks) == self.dist.world_size:
            set_rng_states(ckpt.ranks[rank]["rng"])
            self.train_loader.load_state_dict(ckpt.ranks[rank]["loader"])
        elif state.batches:
            raise InputError(f"{where}: {path.name} was saved mid-epoch by {len(ckpt.ranks)} processes; "
                             f"resume it with as many (now {self.dist.world_size})")  # fmt: skip
        else:  # a version-1 file, or another world size at an epoch's end: the epoch order is seeded
            torch.set_rng_state(ckpt.rng if ckpt.rng is not None else ckpt.ranks[0]["rng"]["torch"])
            if self.train_loader.backend == "dali":
                run.log(f"warning: {path.name} holds no DALI state for {self.dist.world_size} processes; "
                        "DALI's shuffling starts afresh")  # fmt: skip
        dropped = run.rewind_metrics(state.step, state.epoch)
        if changed:
            run.write_config(cfg.to_dict())
        self.saved = (state.step, path)
        position = f", batch {state.batches}/{len(self.train_loader)}" if state.batches else ""
        dropped = f"; dropped {dropped} metrics rows written after it" if dropped else ""
        if state.epoch >= cfg.train.epochs and not state.batches:
            best = run.path / "best.pt"
            run.log(f"{run.path} had finished its {state.epoch} epochs ({path.name}): nothing to train. To "
                    f"train it longer: --resume {run.path} --train.epochs=N with N above {state.epoch}; to "
                    f"start a new run from its weights: --train.init_from={best}")  # fmt: skip
            return state
        run.log(f"resumed {run.path} from {path.name}: epoch {state.epoch + 1}{position}, step "
                f"{state.step}{dropped}")  # fmt: skip
        return state

    def _check_changes(self, ckpt: Checkpoint, changed: list[str]) -> None:
        """The keys that may change on resume under a condition: a longer run, shards that moved."""
        cfg, where = self.cfg, f"--resume {self.run.path}"
        old_epochs = ckpt.config["train"]["epochs"]
        if "train.epochs" in changed:
            if cfg.train.epochs < old_epochs:
                raise InputError(f"{where}: train.epochs={cfg.train.epochs} is shorter than the run's "
                                 f"{old_epochs}; a resumed run may only get longer")  # fmt: skip
            self.run.log(f"train.epochs: {old_epochs} -> {cfg.train.epochs}; the learning-rate schedule "
                         f"is that of the new length from step {ckpt.state.step} on")  # fmt: skip
        if "data.shards" in changed:
            now = self.split_sizes()
            if ckpt.data and ckpt.data != now:
                raise InputError(f"{where}: data.shards={cfg.data.shards} holds other splits than the run's "
                                 f"({now} samples, the run had {ckpt.data})")  # fmt: skip
            sizes = " and split sizes" if ckpt.data else "; this checkpoint records no split sizes"
            self.run.log(f"data.shards: {ckpt.config['data']['shards']} -> {cfg.data.shards} (same classes"
                         f"{sizes})")  # fmt: skip
