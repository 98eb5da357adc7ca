"""Robbie-Xu/CPSD's released students as this recipe's module (`python -m fastmlic.convert --from cpsd`).

What the official code saves (dis_B_cpsd.py:401-405): `model.state_dict()` of the DataParallel student
(keys `module.`) and `ema.state_dict()` of timm's ModelEma around it (`module.module.`).
model/model_101.py's `Resnet101` is torchvision's ResNet-101 as `features` (a Sequential of conv1, bn1,
relu, maxpool, layer1..layer4), a global average pool and `classify` (Linear 2048 -> C): the same
network as a timm ResNet with our `linear` head. Its rows are in the official data sets' orders:
COCO's sorted class names (coco_cluster.py, ML-GCN's category.json), NUS-WIDE's `object_categories`
(nuswide_cluster.py), alphabetical too.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..errors import InputError
from ..released import Released, ReleaseOptions, class_rows, read_release, rename, resnet_sequential

SORTED_ROWS = ("mscoco", "nuswide")  # the data sets the official code trained, both in name order


def read_student(path: Path, cfg: Config, classes: list[str], options: ReleaseOptions) -> Released:
    what = f"{path} (--from cpsd)"
    if cfg.model.head != "linear":
        raise InputError(f"{what}: the released students have a linear classifier; the preset has "
                         f"model.head={cfg.model.head}")  # fmt: skip
    markers = ["features.0.weight", "classify.weight"]
    state, what = read_release(path, "cpsd", "a CPSD Resnet101 student", markers)
    ours = rename(state, {**resnet_sequential("features."), "classify": "model.head.fc"}, what)
    rows = class_rows(cfg.data.dataset, classes, SORTED_ROWS)
    return Released(ours, rows, source="ema" if options.ema else "raw", files=[path])
