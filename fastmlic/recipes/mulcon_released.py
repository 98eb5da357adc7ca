"""SonDaoDuy/MulCon's released models as this recipe's module (`python -m fastmlic.convert --from mulcon`).

What the official code saves (models/base_model.py `save_networks`, train_attention_ema.py:93-95): a
folder of one state dict per network and epoch, `epoch_N_net_X.pth` for the model and
`ema_epoch_N_net_X.pth` for its EMA, X being `E` (torchvision's ResNet-101 as nn.Sequential(conv1, bn1,
relu, maxpool, layer1..layer4)), `A` (models/mab.py ISABMultiLabel: `I` [1, C, 1024] label queries,
`sab1`, `sab2` over the pixels, `mab` from the labels to the pixels, `sab3` over the labels, each a
MAB with fc_q, fc_k, fc_v, ln0, ln1, fc_o), `C_0` ... `C_{C-1}` (one Linear(1024, 1) per class) and, in
stage two, `P` (the projector: Linear, ReLU, Linear). The stage-one preset takes E, A and the C's, the
stage-two preset also P. Rows: COCO in ML-GCN's category.json order (data/new_coco_dataset.py), the
sorted names; the other data sets, which the official code does not read, as the shards.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import Config
from ..errors import InputError, MissingInput
from ..released import (
    Released,
    ReleaseOptions,
    class_rows,
    read_state_dict,
    rename,
    resnet_sequential,
    strip_prefix,
)

SORTED_ROWS = ("mscoco",)
FILE = re.compile(r"(ema_)?epoch_(\d+)_net_([EACP])(?:_(\d+))?\.pth$")
ATTENTION = {"A.I": "model.head.queries", "A.sab1.mab": "model.head.pixels.0",
             "A.sab2.mab": "model.head.pixels.1", "A.mab": "model.head.mab",
             "A.sab3.mab": "model.head.labels", "P": "projector",
             "C.weight": "model.head.class_weight", "C.bias": "model.head.class_bias"}  # fmt: skip


def read_networks(path: Path, cfg: Config, classes: list[str], options: ReleaseOptions) -> Released:
    """The network files of one saved set (an epoch, raw or EMA) in `path`, a folder or one of its files."""
    folder, ema, epoch = pick_set(path, options)
    stem = f"{'ema_' if ema else ''}epoch_{epoch}_net_"
    rows = class_rows(cfg.data.dataset, classes, SORTED_ROWS)
    names = ["E", "A", *(f"C_{i}" for i in range(len(rows)))] + (["P"] if cfg.recipe.stage == 2 else [])
    files = [folder / f"{stem}{n}.pth" for n in names]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        more = sorted(int(m[4]) for f in folder.iterdir() if (m := FILE.match(f.name)) and m[3] == "C"
                      and f.name.startswith(stem))  # fmt: skip
        hint = (f"; the folder has {len(set(more))} class networks C_i for the data set's {len(rows)} classes"
                if "C_" in absent[0] or more and max(more) + 1 != len(rows) else "")  # fmt: skip
        if absent == [f"{stem}P.pth"]:
            hint = "; a stage-one set (no projector P): convert it with a stage-one preset (recipe.stage=1)"
        raise MissingInput(f"{folder}: no {', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''}{hint}")
    state = {}
    for name, file in zip(names, files, strict=True):
        net = name.split("_")[0]
        for key, value in strip_prefix(read_state_dict(file, "--from mulcon")).items():
            if net == "C":
                state.setdefault(f"C.{key}", []).append(value.reshape(-1))
            else:
                state[f"{net}.{key}"] = value
    for key in ("C.weight", "C.bias"):
        state[key] = torch.stack(state[key]).squeeze(-1) if key == "C.bias" else torch.stack(state[key])
    if "A.I" not in state or state["A.I"].ndim != 3:
        raise InputError(f"{files[1]}: not MulCon's attention module ISABMultiLabel (no I [1, C, E])")
    state["A.I"] = state["A.I"][0]
    ours = rename(state, {**resnet_sequential("E."), **ATTENTION}, f"{folder} (--from mulcon)")
    return Released(ours, rows, source="ema" if ema else "raw", files=files,
                    overrides=["--recipe.first_stage="] if cfg.recipe.stage == 2 else [])  # fmt: skip


def pick_set(path: Path, options: ReleaseOptions) -> tuple[Path, bool, int]:
    """(folder, EMA?, epoch): from a file's name, or in a folder from --ema and --epoch (the only epoch
    saved there when --epoch is not given)."""
    if path.is_file():
        match = FILE.match(path.name)
        if not match:
            raise InputError(f"{path}: not a MulCon network file ([ema_]epoch_N_net_X.pth)")
        return path.parent, bool(match[1]), int(match[2])
    if not path.is_dir():
        raise MissingInput(f"{path} does not exist")
    saved = {(bool(m[1]), int(m[2])) for f in path.iterdir() if (m := FILE.match(f.name))}
    if not saved:
        raise InputError(f"{path}: no MulCon network files ([ema_]epoch_N_net_X.pth) in this folder")
    epochs = sorted(e for ema, e in saved if ema == options.ema)
    kind = "EMA" if options.ema else "raw (without --ema)"
    if options.epoch is not None:
        if options.epoch not in epochs:
            raise MissingInput(f"{path}: no {kind} set of epoch {options.epoch}; saved: {epochs or 'none'}")
        return path, options.ema, options.epoch
    if len(epochs) != 1:
        raise InputError(f"{path}: {kind} sets of epochs {epochs or 'none'} are saved here: choose one with "
                         "--epoch (and --ema for the EMA's)")  # fmt: skip
    return path, options.ema, epochs[0]
