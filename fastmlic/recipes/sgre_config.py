"""SGRE's keys; the recipe is sgre.py. No torch here (why: fastmlic/recipes/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RECIPE_CONFIGS, RecipeConfig, option, recipe_name


@RECIPE_CONFIGS.register("sgre")
@dataclass
class SGREConfig(RecipeConfig):
    """SGRE: ASL on the reverse-attention logits + weight x ASL on the label-attention logits."""

    name: str = recipe_name("sgre")
    released = "jasonseu/SGRE's models (the EMA state dict; --embeddings: its data/<data>/bert.npy)"
    embeddings: str = option(
        "minilm",
        "class-name embeddings: a backend (SHARDS/DATASET/label_embeddings.NAME.npy, written by "
        "tools/label_embeddings.py: minilm, bert, glove), a .npy path, or random: the paper's ablation, a "
        "learned [C, 768] parameter from a random start",
    )
    weight: float = option(
        1.0, "weight of the ASL term on the label-attention logits (official lamda)", low=0
    )
    temperature: float = option(1.0, "temperature of the label attention over pixels (official tau)", above=0)
    position: bool = option(False, "sine positional encoding on the tokens' queries, keys (official --pos)")
    layers: int = option(1, "transformer encoder layers over the tokens", low=0)
    attention_dim: int = option(1024, "hidden width of the low-rank bilinear label attention", low=1)
    feedforward: int = option(2048, "encoder feed-forward width", low=1)
    dropout: float = option(0.1, "encoder dropout", low=0, below=1)
    pre_norm: bool = option(False, "norm before attention and feed-forward (official --normalize-before)")
