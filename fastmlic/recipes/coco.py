"""`coco`: contrastive co-occurrence learning (Zhu et al., "Multi-Label Image Classification via
Contrastive Co-occurrence Learning"; official code jasonseu/CoCo, `models/mlic.py` and `models/utils.py`,
read for this file).

- Head `cooccurrence`: a transformer over the backbone tokens (2 encoder layers) and learnable label
  queries (1 decoder layer) gives label features x [B, L, d]; a linear layer on [x_i, mean of the
  backbone tokens] predicts, per image, the co-occurrence row of label i: `weights` [B, L, L] after a
  sigmoid; a gated graph network (GRU-style update) runs `num_steps` times over that graph: ax; a
  per-class element-wise classifier scores [x, ax].
- Contrastive co-occurrence term: M = y y^T; the positive view px = GGNN(x, weights * M) keeps only
  edges among the image's labels, the negative view nx = GGNN(x, weights * (1 - M)) only the others;
  both without gradient. For every present label p, cross-entropy with target 0 over the raw dot
  products [<ax_p, px_p>, <ax_p, nx_p>, <ax_p, ax_q> for the other present labels q] / tau, averaged over
  the image's present labels, summed over images, divided by the batch size.
- Loss = ASL (the Query2Label normalisation: mean x 1000) + `weight` x contrastive.

Where the official code and its description differ, this file follows the code:
- `nn.Transformer(num_encoder_layers=cfg.dec_layers, num_decoder_layers=cfg.enc_layers)` swaps the
  names: with the defaults (enc 1, dec 2) the image tokens get 2 encoder layers and the label queries
  1 decoder layer. Here the keys say what they do: `encoder_layers: 2`, `decoder_layers: 1`.
- The pooled vector beside each label feature is the mean of the backbone's tokens, taken before the
  transformer, not the mean of the label features.
- The transformer works at the backbone's width (no input projection): `model.embed_dim: 0` in the
  presets. Another width adds a linear projection of the tokens, our addition.
Where this differs on purpose: weight decay skips biases and norm weights (the trainer's rule; the
original decays every parameter); AMP is bf16 where the device has it (the original: fp16 + GradScaler,
`train.amp: fp16` here); the official loop over images is one batched computation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ConfigError
from ..models import HEADS, Features, build_model
from .base import RECIPES, Recipe, RecipeModule, Term


def cooccurrence_contrastive_loss(
    ax: torch.Tensor, px: torch.Tensor, nx: torch.Tensor, targets: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """The contrastive co-occurrence loss. `ax` (anchor, the graph features of the predicted graph), `px`
    (positive view), `nx` (negative view) are [B, L, d]; `targets` [B, L] multi-hot. For each present
    label p of image b: CE(target 0) over [<ax_p, px_p>, <ax_p, nx_p>, <ax_p, ax_q> for present q != p]
    / tau; the mean over the image's present labels (0 for an image without any), summed over images,
    divided by B. Returns an fp32 scalar."""
    ax, px, nx = ax.float(), px.float(), nx.float()
    batch, labels = targets.shape
    present = targets > 0.5
    positive = (ax * px).sum(-1) / tau  # [B, L]
    negative = (ax * nx).sum(-1) / tau
    others = ax @ ax.transpose(1, 2) / tau  # [B, L (anchor p), L (other q)]
    not_self = ~torch.eye(labels, dtype=torch.bool, device=targets.device)
    others = others.masked_fill(~(present.unsqueeze(1) & not_self), float("-inf"))
    logits = torch.cat([positive.unsqueeze(-1), negative.unsqueeze(-1), others], dim=-1)
    per_label = torch.logsumexp(logits, dim=-1) - positive  # CE with target 0; finite for every p
    per_label = torch.where(present, per_label, 0.0)
    per_image = per_label.sum(1) / present.sum(1).clamp(min=1)
    return per_image.sum() / batch


# --------------------------------------------------------------------------- the head


class GatedGraph(nn.Module):
    """The official GatedGNN: `steps` rounds of messages m = A h and a GRU-style update
    z = s(W_z m + U_z h), r = s(W_r m + U_r h), c = tanh(W_c m + U_c (r * h)), h' = (1 - z) h + z c.
    The three W (and the two U that read h) are one matrix each, so a round costs three matmuls."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.steps = steps
        self.message = nn.Linear(dim, 3 * dim, bias=False)  # W_z, W_r, W_c
        self.state = nn.Linear(dim, 2 * dim, bias=False)  # U_z, U_r
        self.reset_state = nn.Linear(dim, dim, bias=False)  # U_c
        for linear, n in ((self.message, 3), (self.state, 2)):  # each block as its own Linear(dim, dim)
            for block in linear.weight.data.chunk(n):
                nn.init.kaiming_uniform_(block, a=math.sqrt(5))

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            wz, wr, wc = self.message(adjacency @ h).chunk(3, dim=-1)
            uz, ur = self.state(h).chunk(2, dim=-1)
            z, r = torch.sigmoid(wz + uz), torch.sigmoid(wr + ur)
            h = (1 - z) * h + z * torch.tanh(wc + self.reset_state(r * h))
        return h


@HEADS.register("cooccurrence")
class CooccurrenceHead(nn.Module):
    """Transformer label features, a predicted per-image co-occurrence graph, a gated graph network over
    it, and a per-class classifier on [label feature, graph feature]."""

    model_keys = ("embed_dim", "heads")  # its dropout is recipe.dropout
    outputs = ("logits", "label_features", "cooccurrence", "graph_features")
    per_class = ("queries", "cooccurrence.weight", "cooccurrence.bias", "class_weight", "class_bias")

    def __init__(self, num_features: int, num_classes: int, embed_dim: int = 0, heads: int = 8,
                 encoder_layers: int = 2, decoder_layers: int = 1, num_steps: int = 1,
                 feedforward: int = 2048, dropout: float = 0.1, **_):  # fmt: skip
        super().__init__()
        width = embed_dim or num_features
        if width % heads:
            raise ConfigError(f"cooccurrence head: width {width} (model.embed_dim, or the backbone's when 0) "
                             f"is not divisible by model.heads={heads}")  # fmt: skip
        self.embed_dim = width
        self.input = nn.Identity() if width == num_features else nn.Linear(num_features, width)
        self.queries = nn.Parameter(torch.randn(num_classes, width))  # nn.Embedding's N(0, 1)
        self.transformer = nn.Transformer(width, heads, encoder_layers, decoder_layers, feedforward, dropout,
                                          batch_first=True)  # fmt: skip
        self.cooccurrence = nn.Linear(2 * width, num_classes)
        self.graph = GatedGraph(width, num_steps)
        # the official Element_Wise_Layer: label c scores [x_c, ax_c] with its own row, U(+-1/sqrt(2d))
        bound = 1 / math.sqrt(2 * width)
        self.class_weight = nn.Parameter(torch.empty(num_classes, 2 * width).uniform_(-bound, bound))
        self.class_bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, features: Features, return_attention: bool = False) -> dict:
        tokens = self.input(features.tokens)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        x = self.transformer(tokens, queries)  # [B, L, d]
        pooled = tokens.mean(1, keepdim=True).expand_as(x)  # the backbone tokens' mean, as the original
        weights = torch.sigmoid(self.cooccurrence(torch.cat([x, pooled], dim=-1)))  # [B, L, L]
        ax = self.graph(x, weights)
        logits = (torch.cat([x, ax], dim=-1) * self.class_weight).sum(-1) + self.class_bias
        return {"logits": logits, "label_features": x, "cooccurrence": weights, "graph_features": ax}


# --------------------------------------------------------------------------- the recipe


class CoCoModule(RecipeModule):
    """The MLIC model; given the targets, also the positive and negative views of the graph (no grad)."""

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict:
        out = self.model(images)
        if targets is not None:
            edges = targets.unsqueeze(-1) * targets.unsqueeze(1)  # M = y y^T: edges among present labels
            x, weights, graph = out["label_features"], out["cooccurrence"], self.model.head.graph
            with torch.no_grad():
                out["positive_view"] = graph(x, weights * edges)
                out["negative_view"] = graph(x, weights * (1 - edges))
        return out


@RECIPES.register("coco")
class CoCo(Recipe):
    head_outputs = CooccurrenceHead.outputs

    @classmethod
    def read_released(cls, path, cfg, classes, options):
        from .coco_released import read_model

        return read_model(path, cfg, classes, options)

    def build_module(self, trained: dict | None = None) -> CoCoModule:
        r = self.cfg.recipe
        return CoCoModule(build_model(self.cfg.model, len(self.classes), encoder_layers=r.encoder_layers,
                                      decoder_layers=r.decoder_layers, num_steps=r.num_steps,
                                      feedforward=r.feedforward, dropout=r.dropout))  # fmt: skip

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        r = self.cfg.recipe
        if r.weight == 0:  # the original skips both views when lamda is 0
            return {"cls": self.classification(net(batch.images)["logits"], batch)}
        out = net(batch.images, batch.targets)
        anchor, positive, negative = out["graph_features"], out["positive_view"], out["negative_view"]
        contrastive = cooccurrence_contrastive_loss(anchor, positive, negative, batch.targets, r.temperature)
        # summed over this rank's images and divided by its batch: a mean; DDP averages it to the global one
        return {"cls": self.classification(out["logits"], batch),
                "contrastive": Term(contrastive, "mean", weight=r.weight)}  # fmt: skip
