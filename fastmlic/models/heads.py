"""Classification heads. Each takes the backbone's (tokens, pooled) and returns a dict with
`logits` [B, C] and, where the head has them, `label_embeddings` [B, C, P] (L2-normalised, for the
contrastive loss) and `attention` [B, C, N] (per-label attention over the feature tokens)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """Global pool + FC: the ASL baseline."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0, **_):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor, return_attention: bool = False) -> dict:
        return {"logits": self.fc(self.drop(pooled))}


class LabelAttentionHead(nn.Module):
    """Label-level attention as in MulCon: one learnable query per label cross-attends to the feature
    tokens, giving one embedding per label; a per-label linear classifier scores it, and a projection
    MLP maps it to the unit sphere for the label-level contrastive loss. One decoder layer (cross
    attention + FFN, post-norm, as Query2Label) stands in for MulCon's ISAB stack."""

    def __init__(self, num_features: int, num_classes: int, embed_dim: int = 512, heads: int = 4,
                 proj_dim: int = 128, drop_rate: float = 0.0):  # fmt: skip
        super().__init__()
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
        self.project = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True),
                                     nn.Linear(embed_dim, proj_dim))  # fmt: skip

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor, return_attention: bool = False) -> dict:
        memory = self.input(tokens)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        attended, weights = self.attn(queries, memory, memory, need_weights=return_attention)
        h = self.norm1(queries + attended)
        h = self.norm2(h + self.ffn(h))  # [B, C, E]
        out = {
            "logits": (h * self.class_weight).sum(-1) + self.class_bias,
            "label_embeddings": F.normalize(self.project(h), dim=-1),
        }
        if return_attention:
            out["attention"] = weights  # [B, C, N], averaged over heads
        return out


HEADS = {"linear": LinearHead, "label_attention": LabelAttentionHead}
