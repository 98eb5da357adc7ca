"""Classification heads, registered by name in HEADS (`model.head`). Each takes the backbone's
`Features` and returns a dict with `logits` [B, C] and, where the head has them, `label_features`
[B, C, E] (one vector per label, for recipes that work on labels) and `attention` [B, C, N] (per-label
attention over the feature grid). A head lists what it returns in `outputs`, so a recipe can check at
start that the head gives what it needs, and its per-class parameters (first dimension = classes) in
`per_class`, so checkpoints load by class name, and the `model` section's head keys it reads in
`model_keys` (of drop_rate, embed_dim, heads), so a run refuses one it would silently ignore."""

from __future__ import annotations

import torch
from torch import nn

from ..plugins import load_recipes
from ..registry import Registry
from .backbone import Features

# the generic heads below, and those recipes bring (loaded with the recipes: fastmlic/plugins.py)
HEADS: Registry[type[nn.Module]] = Registry("head", "model.head", load=load_recipes)


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Global pool + FC: the ASL baseline."""

    outputs = ("logits",)
    model_keys = ("drop_rate",)
    per_class = ("fc.weight", "fc.bias")

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0, **_):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features: Features, return_attention: bool = False) -> dict:
        return {"logits": self.fc(self.drop(features.pooled))}


@HEADS.register("label_attention")
class LabelAttentionHead(nn.Module):
    """Label-level attention: one learnable query per label cross-attends to the feature tokens, giving
    one feature vector per label, which a per-label linear classifier scores. One decoder layer (cross
    attention + FFN, post-norm, as Query2Label)."""

    outputs = ("logits", "label_features", "attention")
    model_keys = ("drop_rate", "embed_dim", "heads")
    per_class = ("queries", "class_weight", "class_bias")

    def __init__(self, num_features: int, num_classes: int, embed_dim: int = 512, heads: int = 4,
                 drop_rate: float = 0.0, **_):  # fmt: skip
        super().__init__()
        self.embed_dim = embed_dim
        self.input = nn.Sequential(nn.Linear(num_features, embed_dim), nn.LayerNorm(embed_dim))
        self.queries = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.queries)
        self.attn = nn.MultiheadAttention(embed_dim, heads, dropout=drop_rate, batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(), nn.Dropout(drop_rate),
                                 nn.Linear(2 * embed_dim, embed_dim))  # fmt: skip
        self.norm2 = nn.LayerNorm(embed_dim)
        # per-label classifier: label c is scored by its own weight vector (Q2L's GroupWiseLinear)
        self.class_weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        self.class_bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.normal_(self.class_weight, std=embed_dim**-0.5)

    def forward(self, features: Features, return_attention: bool = False) -> dict:
        tokens = features.tokens
        memory = self.input(tokens)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        attended, weights = self.attn(queries, memory, memory, need_weights=return_attention)
        h = self.norm1(queries + attended)
        h = self.norm2(h + self.ffn(h))  # [B, C, E]
        out = {"logits": (h * self.class_weight).sum(-1) + self.class_bias, "label_features": h}
        if return_attention:
            out["attention"] = weights  # [B, C, N], averaged over heads
        return out
