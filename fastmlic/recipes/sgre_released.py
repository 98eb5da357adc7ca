"""jasonseu/SGRE's released models as this recipe's module (`python -m fastmlic.convert --from sgre`).

What the official code saves: the EMA model's state dict (train.py, as CoCo's; keys `module.`). Its
MLIC (models/mlic.py) holds `backbone` (torchvision's ResNet giving tokens), `position_embedding.pe` (a
sine table for one image size: we compute it for any grid, so it is not kept), `encoder.layers.i`
(self_attn, linear1, linear2, norm1, norm2), `attention` (LowRankBilinearAttention: linear1 on pixels,
linear2 on labels, hidden_linear, target_linear), `fc` (Element_Wise_Layer: the label classifier),
`fc2` (Linear, ReLU, Dropout, Linear), `net1`..`net4` (Conv1d + BatchNorm1d: our query, key, value,
out) and, for `embed_type random` only, `embeddings`. The class-name embeddings of the other types are
not in the checkpoint: the official code reads `data/<data>/bert.npy` (scripts/embedding.py), one row
per class in its label.txt order, so `--embeddings` gives that file. Rows: VOC's names sorted
(scripts/voc2007.py, voc2012.py), COCO and NUS-WIDE as the shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import InputError, MissingInput
from ..released import Released, ReleaseOptions, class_rows, read_release, rename

SORTED_ROWS = ("voc2007", "voc2012")
HEAD = {"attention.linear1": "attention.pixels", "attention.linear2": "attention.labels",
        "attention.hidden_linear": "attention.hidden", "attention.target_linear": "attention.score",
        "fc2": "classifier", "net1.": "query.block.", "net2.": "key.block.", "net3.": "value.block.",
        "net4.": "out.block.", "embeddings": "embeddings"}  # fmt: skip
LAYER = {"self_attn": "attn", "linear1": "ffn.0", "linear2": "ffn.3", "norm1": "norm1", "norm2": "norm2"}


def read_model(path: Path, cfg: Config, classes: list[str], options: ReleaseOptions) -> Released:
    markers = ["fc2.0.weight", "attention.target_linear.weight"]
    state, what = read_release(path, "sgre", "an SGRE MLIC model", markers)
    rows = class_rows(cfg.data.dataset, classes, SORTED_ROWS)
    state.pop("position_embedding.pe", None)
    notes, files = [], [path]
    learned = cfg.recipe.embeddings == "random"
    if learned != ("embeddings" in state):
        raise InputError(f"{what}: {'holds' if 'embeddings' in state else 'has no'} learned class embeddings "
                         f"(embed_type random), the preset has recipe.embeddings={cfg.recipe.embeddings}; "
                         "set --recipe.embeddings=random for a model trained so, or leave it")  # fmt: skip
    if not learned:
        state["embeddings"] = official_embeddings(options.embeddings, len(rows), what)
        files.append(options.embeddings)
        notes.append(f"class-name embeddings from {options.embeddings}, kept in best.pt")
    state["fc.label_weight"], state["fc.label_bias"] = state.pop("fc.weight"), state.pop("fc.bias")
    prefixes = {"backbone": "model.backbone.model", "fc.label_weight": "model.head.label_weight",
                "fc.label_bias": "model.head.label_bias", **{k: f"model.head.{v}" for k, v in HEAD.items()}}
    layers = {k.split(".")[2] for k in state if k.startswith("encoder.layers.")}
    for i in layers:
        for old, new in LAYER.items():
            prefixes[f"encoder.layers.{i}.{old}"] = f"model.head.encoder.{i}.{new}"
    return Released(rename(state, prefixes, what), rows, source="ema", files=files, notes=notes)


def official_embeddings(path: Path | None, rows: int, what: str) -> torch.Tensor:
    if path is None:
        raise MissingInput(f"{what}: the official code reads its class-name embeddings from "
                           "data/<data>/bert.npy, not from the checkpoint: give that file with --embeddings")
    if not path.is_file():
        raise MissingInput(f"--embeddings {path} does not exist")
    try:
        vectors = np.load(path)
    except Exception as e:  # not an .npy
        raise InputError(f"--embeddings {path}: not a readable .npy ({e})") from None
    if vectors.ndim != 2 or vectors.shape[0] != rows:
        raise InputError(f"--embeddings {path}: shape {vectors.shape}, one row per class ({rows}) expected")
    return torch.from_numpy(vectors).float()
