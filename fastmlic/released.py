"""Reading checkpoints that other codebases saved: what `python -m fastmlic.convert` shares between the
formats it reads. A recipe that can read its paper's released checkpoints implements
`Recipe.read_released` (fastmlic/recipes/base.py) with these helpers; the backbone formats are in
fastmlic/models/imported.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError, MissingInput


@dataclass
class ReleaseOptions:
    """What the command line adds to a released file: which saved set of a folder (`epoch`, `ema`) and
    files the official code reads beside its checkpoint (`embeddings`)."""

    epoch: int | None = None
    ema: bool = False
    embeddings: Path | None = None


@dataclass
class Released:
    """A released checkpoint in our terms: the state dict of the recipe's trainable module, the class
    names of its per-class rows in their order, which weights these are (raw or EMA), the files read
    (for the log, with their sha256), config overrides the run needs (e.g. no earlier stage to start
    from), and notes for the user."""

    state: dict[str, torch.Tensor]
    classes: list[str]
    source: str = "raw"
    files: list[Path] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict saved with torch.save (tensors only are loaded: a released file runs no code)."""
    if not path.is_file():
        raise MissingInput(f"{what}: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects beyond tensors
        raise InputError(f"{what}: {path} is not a readable torch state dict ({e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {'state_dict': ..., 'epoch': ...} wrapping
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kinds = sorted({type(v).__name__ for v in state.values()}) if isinstance(state, dict) else []
        raise InputError(f"{what}: {path} holds {type(state).__name__} {kinds or ''}, not a state dict of "
                         "tensors")  # fmt: skip
    return state


def read_release(path: Path, fmt: str, model: str, markers: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    """A released file's state dict without its `module.` prefixes, and how errors name the file; one
    without every key of `markers` is refused as not `model`, listing what it holds."""
    what = f"{path} (--from {fmt})"
    state = strip_prefix(read_state_dict(path, f"--from {fmt}"))
    absent = [k for k in markers if k not in state]
    if absent:
        raise InputError(f"{what}: not {model} (no {', '.join(absent[:4])}); it holds "
                         f"{describe_keys(list(state))}")  # fmt: skip
    return state, what


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Keys without every leading `prefix` (DataParallel and an EMA of it save `module.module.`)."""
    out = {}
    for key, value in state.items():
        while key.startswith(prefix):
            key = key[len(prefix) :]
        out[key] = value
    return out


def rename(state: dict[str, torch.Tensor], prefixes: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    """Each key's longest matching prefix in `prefixes` replaced by its value; a key that matches none is
    an error listing those keys by group (it would otherwise be silently dropped)."""
    out, unknown = {}, []
    ordered = sorted(prefixes, key=len, reverse=True)
    for key, value in state.items():
        old = next((p for p in ordered if key == p or key.startswith(p.rstrip(".") + ".")), None)
        if old is None:
            unknown.append(key)
            continue
        out[prefixes[old] + key[len(old) :]] = value
    if unknown:
        raise InputError(f"{what}: tensors this format does not have: {describe_keys(unknown)}")
    return out


def describe_keys(keys: list[str], shown: int = 6) -> str:
    """'layer4.1.conv1 (1 tensor), layer4.1.bn1 (5 tensors)': keys grouped by the deepest module path
    that gives at most `shown` groups, so hundreds of keys read as the few parts that differ."""
    if len(keys) <= 2:
        return ", ".join(keys)
    modules = [k.split(".")[:-1] or [k] for k in keys]
    depth = max(len(m) for m in modules)
    while depth > 1 and len({".".join(m[:depth]) for m in modules}) > shown:
        depth -= 1
    groups: dict[str, int] = {}
    for m in modules:
        group = ".".join(m[:depth])
        groups[group] = groups.get(group, 0) + 1
    items = [f"{g} ({n} tensor{'s' if n > 1 else ''})" for g, n in groups.items()]
    more = f", ... {len(items) - shown} more groups" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """`state` must have exactly the keys and shapes of `expected` (a freshly built module's state dict):
    missing, unexpected and misshapen tensors are listed by group."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} where {tuple(expected[k].shape)} is expected"
              for k in expected if k in state and state[k].shape != expected[k].shape]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing {describe_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {describe_keys(unexpected)}")
    if shapes:
        problems.append("other shapes: " + "; ".join(shapes[:4]) + (" ..." if len(shapes) > 4 else ""))
    if problems:
        raise InputError(f"{what}: " + "; ".join(problems))


def rows_of(state: dict[str, torch.Tensor], key: str, classes: list[str], what: str) -> None:
    """The per-class tensor `key` must have one row per class of the data set: a checkpoint trained on
    another data set is refused by its class count, before any key is compared."""
    if key not in state:
        return  # check_keys names it
    rows = state[key].shape[0]
    if rows != len(classes):
        raise InputError(f"{what}: {key} has {rows} classes, the data set has {len(classes)}: a checkpoint "
                         "of another data set, or the wrong --cfg")  # fmt: skip


def resnet_sequential(prefix: str, into: str = "model.backbone.model.") -> dict[str, str]:
    """`rename` prefixes for a torchvision ResNet saved as nn.Sequential(conv1, bn1, relu, maxpool,
    layer1, ..., layer4) under `prefix` (how several papers' code cut off the classifier) into our
    timm ResNet backbone."""
    parts = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}
    return {f"{prefix}{i}": into + name for i, name in parts.items()}


def class_rows(dataset: str, classes: list[str], sorted_in: tuple[str, ...]) -> list[str]:
    """The class names in a released model's row order: sorted by name for the data sets in `sorted_in`
    (whose official code numbered them so), the shards' order for the others."""
    return sorted(classes) if dataset in sorted_in else list(classes)
