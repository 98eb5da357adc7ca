"""Training methods: how a batch becomes a loss, built by name (`train.method`).

The engine only calls `training_step` and `after_step`, so a method can add loss terms, use several
views of a batch, or keep auxiliary models (an EMA teacher, frozen teachers; registered in
`auxiliary` so they are checkpointed) without touching the loop.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import Batch
from .losses import MultiLabelLoss


class Method:
    def __init__(self, criterion: MultiLabelLoss):
        self.criterion = criterion
        self.auxiliary: dict[str, nn.Module] = {}

    def training_step(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimizer step (e.g. to update a teacher)."""

    def state_dict(self) -> dict:
        return {name: m.state_dict() for name, m in self.auxiliary.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.auxiliary.items():
            module.load_state_dict(state[name])


class Standard(Method):
    """Supervised multi-label training: the configured loss on the model's outputs."""

    def training_step(self, model, batch):
        outputs = model(batch.images)
        return self.criterion(outputs, batch.targets, batch.ignore)


METHODS: dict[str, type[Method]] = {"standard": Standard}


def build_method(name: str, criterion: MultiLabelLoss) -> Method:
    if name not in METHODS:
        raise ValueError(f"train.method={name!r} is not a known method; known: {', '.join(METHODS)}")
    return METHODS[name](criterion)
