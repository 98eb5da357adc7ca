"""`sgre`: semantic-guided representation enhancement (Zhu et al., IEEE TCSVT 34(10), 2024; official code
jasonseu/SGRE, `models/mlic.py`, read for this file).

- Class-name embeddings [L, D_text], one row per class, from `tools/label_embeddings.py` (MiniLM offline,
  BERT as the paper, GloVe), read by class name; a persistent buffer of the head, so a checkpoint
  carries the embeddings it was trained with. `recipe.embeddings: random` is the paper's ablation as
  the original builds it (`embed_type == 'random'`): a learned [L, 768] parameter, kaiming-uniform.
- Head `semantic`: backbone tokens -> transformer encoder layer(s) (the sine positional encoding added
  to queries and keys with `recipe.position`) -> low-rank bilinear attention between the tokens and
  the label embeddings, alpha = softmax_pixels(w^T (U tanh(W1 x * W2 e) + b) / tau), giving per-label
  features f = alpha x and `label_logits` from a per-class classifier -> reverse attention from the
  pixels to the label features (1x1 Conv + BN + ReLU projections) gives x' per pixel -> an MLP over
  [x, x'] (2d -> 2d -> L, dropout 0.5) max-pooled over pixels: `logits`, the scores evaluation uses.
- Loss = ASL(logits) + `weight` x ASL(label_logits) (the official lamda).
- The head works at the backbone's width, as the original (so a run refuses `model.embed_dim` and
  `model.drop_rate`: `recipe.dropout` is its dropout); `model.heads` sets the encoder's attention heads
  (8 in the presets, as the original).

Where this differs on purpose: weight decay skips biases and norm weights (the original's `-twd`
choice; its README commands decay every parameter); the positional encoding is computed for the
feature grid of each input (the original precomputes it for img_size / 32, or / 16 for ViT and CvT).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError
from ..models import HEADS, Features, build_model
from ..shards.storage import is_url
from .base import RECIPES, Recipe, RecipeModule, Term
from .sgre_embeddings import BACKENDS, command_for, embeddings_path, read_label_embeddings


def sine_positions(grid: tuple[int, int], dim: int, device=None) -> torch.Tensor:
    """DETR's normalised sine encoding for an (H, W) grid, [H * W, dim] in row-major order: the first
    dim / 2 channels encode the row, the rest the column, sin and cos interleaved."""
    h, w = grid
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    rows = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    cols = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    freq = 10000 ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def encode(v: torch.Tensor) -> torch.Tensor:  # [n] -> [n, half]
        v = v[:, None] / freq
        return torch.stack((v[:, 0::2].sin(), v[:, 1::2].cos()), dim=2).flatten(1)

    y, x = encode(rows), encode(cols)
    return torch.cat([y[:, None].expand(h, w, half), x[None].expand(h, w, half)], dim=-1).flatten(0, 1)


class EncoderLayer(nn.Module):
    """A transformer encoder layer whose positional encoding enters the queries and keys, not the values."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(feedforward, dim))  # fmt: skip
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x) if self.pre_norm else x
        qk = h if pos is None else h + pos
        x = x + self.drop1(self.attn(qk, qk, h, need_weights=False)[0])
        if not self.pre_norm:
            x = self.norm1(x)
        h = self.norm2(x) if self.pre_norm else x
        x = x + self.drop2(self.ffn(h))
        return x if self.pre_norm else self.norm2(x)


class BilinearLabelAttention(nn.Module):
    """Low-rank bilinear attention of each label embedding over the pixels: [B, L, N], summing to 1."""

    def __init__(self, dim: int, text_dim: int, hidden: int):
        super().__init__()
        self.pixels = nn.Linear(dim, hidden, bias=False)
        self.labels = nn.Linear(text_dim, hidden, bias=False)
        self.hidden = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, embeddings: torch.Tensor, tau: float) -> torch.Tensor:
        joint = torch.tanh(self.pixels(x).unsqueeze(1) * self.labels(embeddings)[None, :, None])  # [B,L,N,h]
        return torch.softmax(self.score(self.hidden(joint)).squeeze(-1) / tau, dim=-1)


class Pointwise(nn.Module):
    """1x1 Conv1d + BatchNorm1d + ReLU over a token axis, on [B, N, d] (the original's net1..net4)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim, 1, bias=False), nn.BatchNorm1d(dim),
                                   nn.ReLU(inplace=True))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.transpose(1, 2)).transpose(1, 2)


@HEADS.register("semantic")
class SemanticHead(nn.Module):
    """Label attention guided by class-name embeddings, then reverse attention back to the pixels."""

    outputs = ("logits", "label_logits", "attention")
    model_keys = ("heads",)  # its width is the backbone's, its dropout recipe.dropout
    needs = ("embeddings",)
    per_class = ("embeddings", "label_weight", "label_bias", "classifier.3.weight", "classifier.3.bias")

    def __init__(self, num_features: int, num_classes: int, heads: int = 8,
                 embeddings: torch.Tensor | None = None, temperature: float = 1.0, position: bool = False,
                 layers: int = 1, attention_dim: int = 1024, feedforward: int = 2048, dropout: float = 0.1,
                 pre_norm: bool = False, learn_embeddings: bool = False, **_):  # fmt: skip
        super().__init__()
        if embeddings is None or embeddings.shape[0] != num_classes:
            raise ConfigError("semantic head: needs a class-name embedding per class (from recipe.name=sgre)")
        d = num_features
        if d % heads:
            raise ConfigError(f"semantic head: backbone width {d} is not divisible by model.heads={heads}")
        self.temperature, self.position = temperature, position
        if learn_embeddings:  # the paper's random-embedding ablation: trained with the rest
            self.embeddings = nn.Parameter(embeddings.float().clone())
        else:  # fixed class-name embeddings, kept in the state dict so a checkpoint needs no file
            self.register_buffer("embeddings", embeddings.float().clone())
        self.encoder = nn.ModuleList(
            EncoderLayer(d, heads, feedforward, dropout, pre_norm) for _ in range(layers)
        )
        self.attention = BilinearLabelAttention(d, embeddings.shape[1], attention_dim)
        bound = 1 / math.sqrt(d)  # the original Element_Wise_Layer: U(+-1/sqrt(d))
        self.label_weight = nn.Parameter(torch.empty(num_classes, d).uniform_(-bound, bound))
        self.label_bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))
        self.query, self.key, self.value, self.out = (Pointwise(d) for _ in range(4))
        self.classifier = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(2 * d, num_classes))  # fmt: skip

    def forward(self, features: Features, return_attention: bool = False) -> dict:
        x = features.tokens
        pos = sine_positions(features.grid, x.shape[-1], x.device).to(x.dtype) if self.position else None
        for layer in self.encoder:
            x = layer(x, pos)
        alpha = self.attention(x, self.embeddings.to(x.dtype), self.temperature)  # [B, L, N]
        f = alpha @ x  # per-label features [B, L, d]
        label_logits = (f * self.label_weight).sum(-1) + self.label_bias
        back = torch.softmax(self.query(x) @ self.key(f).transpose(1, 2), dim=-1)  # pixels over labels
        attended = self.out(back @ self.value(f))  # [B, N, d]
        logits = self.classifier(torch.cat([x, attended], dim=-1)).amax(dim=1)  # max over pixels
        return {"logits": logits, "label_logits": label_logits, "attention": alpha}


# --------------------------------------------------------------------------- the recipe


RANDOM_WIDTH = 768  # the original's random class embeddings: BERT's width (models/mlic.py)


@RECIPES.register("sgre")
class SGRE(Recipe):
    head_outputs = ("logits", "label_logits")
    head_inputs = ("embeddings",)

    @classmethod
    def read_released(cls, path, cfg, classes, options):
        from .sgre_released import read_model

        return read_model(path, cfg, classes, options)

    def embeddings_file(self) -> tuple[Path, str]:
        """The embeddings file `recipe.embeddings` names, and the command that writes it."""
        d, name = self.cfg.data, self.cfg.recipe.embeddings
        if name in BACKENDS:
            if is_url(d.shards):  # tools/label_embeddings.py writes beside local shards only
                raise ConfigError(f"recipe.embeddings={name} is read beside the shards, and data.shards="
                                  f"{d.shards} is a URL: write the embeddings from a local copy of the split "
                                  f"description (tools/label_embeddings.py), then recipe.embeddings=PATH.npy")
            return embeddings_path(Path(d.shards) / d.dataset, name), command_for(d.dataset, d.shards, name)
        if name.endswith(".npy") or os.sep in name:
            return Path(name), "python tools/label_embeddings.py --help"
        raise ConfigError(f"recipe.embeddings={name!r}: name a backend ({', '.join(BACKENDS)}) or a .npy")

    def build_module(self, trained: dict | None = None) -> RecipeModule:
        r, key = self.cfg.recipe, "model.head.embeddings"
        learned = r.embeddings == "random"
        if trained is not None and key in trained:  # inference: the embeddings it was trained with
            embeddings = trained[key]
        elif learned:  # as the original's embed_type 'random': a [C, 768] parameter, Linear's own init
            embeddings = torch.empty(len(self.classes), RANDOM_WIDTH)
            nn.init.kaiming_uniform_(embeddings, a=math.sqrt(5))
        else:
            path, command = self.embeddings_file()
            embeddings = torch.from_numpy(read_label_embeddings(path, self.classes, command))
        return RecipeModule(build_model(
            self.cfg.model, len(self.classes), embeddings=embeddings, temperature=r.temperature,
            position=r.position, layers=r.layers, attention_dim=r.attention_dim, feedforward=r.feedforward,
            dropout=r.dropout, pre_norm=r.pre_norm, learn_embeddings=learned))  # fmt: skip

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        out = net(batch.images)
        label = self.classification(out["label_logits"], batch)
        label.weight = self.cfg.recipe.weight
        return {"cls": self.classification(out["logits"], batch), "label_cls": label}

