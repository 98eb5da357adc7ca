"""The one checkpoint schema (`last.pt`, `best.pt`), its format version, and loading weights by class
name, so runs over a class subset, `init_from` across class sets and evaluation all line up.

    format, version   "fastmlic-checkpoint", FORMAT_VERSION
    kind              "last" (everything to resume) | "best" (the best weights, raw or EMA)
    classes, config   class names in the model's order; the resolved config (a dict)
    model             state dict of the recipe's trainable module
    source, metrics   best.pt: which weights ("raw" | "ema") and their validation metrics
    state             TrainState (epoch, step, position in the epoch, best so far, early-stopping count)
    ema, optimizer, scheduler, scaler, recipe    training states: the rest of what training changes
    ranks             training states: per rank, its random generators and its loader's position
                      (a DALI pipeline checkpoint for that backend)
    data              training states: the sample count of each split the run reads
    teachers          {name: {"path", "sha256"}}: frozen models referenced, never copied
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError, MissingInput

FORMAT = "fastmlic-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no mid-epoch position, one torch RNG state in `rng`


@dataclass
class TrainState:
    epoch: int = 0  # finished epochs
    step: int = 0  # optimiser steps
    best_map: float = -1.0  # best headline mAP of raw or EMA weights so far
    best_source: str = ""  # "raw" | "ema"
    best_epoch: int = 0
    best_raw: float = -1.0
    best_ema: float = -1.0
    bad_epochs: int = 0  # epochs since the best improved (early stopping)
    batches: int = 0  # batches of epoch `epoch` already trained (a mid-epoch checkpoint)
    epoch_loss_sum: float = 0.0  # the sum over ranks of those batches' losses, for the epoch's mean


@dataclass
class Checkpoint:
    kind: str
    classes: list[str]
    config: dict
    model: dict
    source: str = "raw"
    metrics: dict | None = None
    state: TrainState = field(default_factory=TrainState)
    ema: dict | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    rng: torch.Tensor | None = None  # version 1 only
    ranks: list[dict] = field(default_factory=list)
    data: dict[str, int] = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    teachers: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, "version": FORMAT_VERSION}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        out["state"] = dataclasses.asdict(self.state)
        return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint file, or a run folder's best.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            held = ", ".join(sorted(p.name for p in path.glob("*.pt"))) or "no .pt file"
            raise MissingInput(f"checkpoint {path} is a folder without best.pt (it holds {held}): pass a "
                               "checkpoint file, such as RUN/best.pt or RUN/last.pt")  # fmt: skip
        path = path / "best.pt"
    if not path.is_file():
        raise MissingInput(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which
        raise InputError(f"{path}: not a readable fastmlic checkpoint ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f"{path}: not a fastmlic checkpoint (no '{FORMAT}' format marker)")
    if raw.get("version") not in READABLE_VERSIONS:
        raise InputError(
            f"{path}: checkpoint format version {raw.get('version')}, this fastmlic reads version "
            f"{FORMAT_VERSION}"
        )
    names = {f.name for f in dataclasses.fields(Checkpoint)}
    ckpt = Checkpoint(**{k: v for k, v in raw.items() if k in names})
    ckpt.state = TrainState(**raw.get("state", {}))
    return ckpt


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_difference(ours: list[str], theirs: list[str]) -> str:
    """'3 classes only here (a, b, c); 1 only in the checkpoint (d)', or '' when the sets are equal."""
    ours_set, theirs_set = set(ours), set(theirs)
    only_ours = [c for c in ours if c not in theirs_set]
    only_theirs = [c for c in theirs if c not in ours_set]
    parts = []
    for names, where in ((only_ours, "only here"), (only_theirs, "only in the checkpoint")):
        if names:
            shown = ", ".join(names[:8]) + (f", ... {len(names) - 8} more" if len(names) > 8 else "")
            parts.append(f"{len(names)} classes {where} ({shown})")
    if not parts and ours != theirs:
        parts.append("the same classes in another order")
    return "; ".join(parts)


def load_weights(
    module: nn.Module, state: dict, theirs: list[str], ours: list[str], per_class: list[str], what: str,
    strict: bool = True,
) -> list[str]:  # fmt: skip
    """Load `state` (a module state dict trained on classes `theirs`) into `module` (built for classes
    `ours`). Rows of the per-class parameters are taken by class name: a class the checkpoint lacks
    keeps its initialisation. With `strict`, the class lists must be equal and the keys must match.
    Returns notes on what was not loaded (for the log); errors name `what` and the difference."""
    difference = class_difference(ours, theirs)
    if strict and difference:
        raise InputError(f"{what}: {len(theirs)} classes, the shards have {len(ours)}; {difference}")
    row_of = {c: i for i, c in enumerate(theirs)}
    common = [c for c in ours if c in row_of]
    if not common:
        raise InputError(f"{what}: {len(theirs)} classes, the shards have {len(ours)}; none in common")
    if strict:
        module.load_state_dict(state)
        return []
    own = module.state_dict()
    notes = [f"{what}: {difference}; those keep their initialisation"] if difference else []
    col_of = {c: i for i, c in enumerate(ours)}
    src = torch.tensor([row_of[c] for c in common])
    dst = torch.tensor([col_of[c] for c in common])
    merged, mismatched = {}, []
    for name, value in state.items():
        if name not in own:
            continue
        if name in per_class:
            rows = own[name].clone()
            rows[dst] = value[src].to(rows.dtype)
            merged[name] = rows
        elif value.shape == own[name].shape:
            merged[name] = value
        else:
            mismatched.append(f"{name} {tuple(value.shape)} vs {tuple(own[name].shape)}")
    if mismatched:
        raise InputError(f"{what}: weights of another shape: {'; '.join(mismatched[:5])}")
    missing = [n for n in own if n not in state]
    unexpected = [n for n in state if n not in own]
    module.load_state_dict(merged, strict=False)
    if missing:
        notes.append(f"{what}: {len(missing)} tensors not in the checkpoint keep their initialisation "
                     f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")  # fmt: skip
    if unexpected:
        notes.append(f"{what}: {len(unexpected)} checkpoint tensors unused "
                     f"({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''})")  # fmt: skip
    return notes
