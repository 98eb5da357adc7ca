"""jasonseu/CoCo's released models as this recipe's module (`python -m fastmlic.convert --from coco`).

What the official code saves (train.py:87): `ema_model.state_dict()` of its ModelEma (lib/utils.py),
so every key starts with `module.` (`module.module.` when the EMA wrapped the DDP model). Its MLIC
(models/mlic.py) holds `backbone` (models/resnet.py: torchvision's ResNet without its classifier,
giving tokens), `query_embed` (nn.Embedding), `attention` (nn.Transformer, whose encoder and decoder
name their tensors as ours), `net` (the co-occurrence Linear), `encoder` (GatedGNN: fc1_w ... fc3_u,
six Linear without bias) and `fc` (Element_Wise_Layer: weight [C, 2d], bias [C]). Our GatedGraph holds
the three W as one matrix and U_z, U_r as another (recipes/coco.py), so those are stacked. Rows:
scripts/voc2007.py sorts VOC's names (the usual order), scripts/mscoco.py and scripts/nuswide.py keep
COCO's category-id order and Concepts81's, as the shards do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..released import Released, ReleaseOptions, class_rows, read_release, rename

SORTED_ROWS = ("voc2007", "voc2012")
GRAPH = {"message": ("fc1_w", "fc2_w", "fc3_w"), "state": ("fc1_u", "fc2_u"), "reset_state": ("fc3_u",)}


def read_model(path: Path, cfg: Config, classes: list[str], options: ReleaseOptions) -> Released:
    graph = [f"encoder.{w}.weight" for ws in GRAPH.values() for w in ws]
    markers = ["query_embed.weight", "net.weight", "fc.weight", *graph]
    state, what = read_release(path, "coco", "a CoCo MLIC model", markers)
    for ours, parts in GRAPH.items():  # the six GatedGNN matrices into our three
        state[f"encoder.{ours}"] = torch.cat([state.pop(f"encoder.{p}.weight") for p in parts])
    state["fc.class_weight"], state["fc.class_bias"] = state.pop("fc.weight"), state.pop("fc.bias")
    prefixes = {"backbone": "model.backbone.model", "query_embed.weight": "model.head.queries",
                "attention": "model.head.transformer", "net": "model.head.cooccurrence",
                **{f"encoder.{g}": f"model.head.graph.{g}.weight" for g in GRAPH},
                "fc.class_weight": "model.head.class_weight",
                "fc.class_bias": "model.head.class_bias"}  # fmt: skip
    ours = rename(state, prefixes, what)
    # the EMA's own copy of what it averages: the file holds EMA weights unless saved otherwise
    return Released(ours, class_rows(cfg.data.dataset, classes, SORTED_ROWS), source="ema", files=[path])
