"""CoCo's keys; the recipe is coco.py. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RECIPE_CONFIGS, RecipeConfig, option, recipe_name


@RECIPE_CONFIGS.register("coco")
@dataclass
class CoCoConfig(RecipeConfig):
    """CoCo: ASL on the graph-refined logits + the contrastive co-occurrence term."""

    name: str = recipe_name("coco")
    released = "jasonseu/CoCo's models (train.py's EMA state dict: backbone, attention, net, encoder, fc)"
    weight: float = option(
        1.0, "weight of the contrastive co-occurrence term (the official lamda; 0: off)", low=0, zero="off"
    )
    temperature: float = option(1.0, "temperature tau of the contrastive term", above=0)
    num_steps: int = option(1, "gated graph network iterations over the predicted co-occurrence graph", low=1)
    encoder_layers: int = option(
        2, "transformer layers over the image tokens (the official --dec-layers)", low=0
    )
    decoder_layers: int = option(
        1, "transformer layers over the label queries (the official --enc-layers)", low=1
    )
    feedforward: int = option(
        2048, "transformer feed-forward width (nn.Transformer's default, as the code)", low=1
    )
    dropout: float = option(0.1, "transformer dropout", low=0, below=1)
