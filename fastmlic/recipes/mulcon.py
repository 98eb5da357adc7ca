"""`mulcon`: label-level contrastive learning in two stages (Dao et al., "Contrastively Enforcing
Distinctiveness for Multi-label Image Classification", Neurocomputing 555, 2023; official code
SonDaoDuy/MulCon, read for this file).

- Head `mulcon` (as `models/mab.py` ISABMultiLabel builds it): two set-attention blocks (SAB) over the
  pixel tokens, a multihead attention block (MAB) whose queries are learnable label embeddings
  (Xavier init) attending to the pixels, and a SAB over the label tokens, with layer norm: one
  embedding per label. One linear classifier per label (the official Python list of nn.Linear(E, 1),
  here one [C, E] weight). Linear layers start from N(0, 0.02) with zero bias (`init_net`).
- Stage 1 (`recipe.stage: 1`): the classification loss only (the paper's BCE summed and divided by
  B x C is `loss.name: bce, loss.reduction: mean`; ASL works too).
- Stage 2 (`recipe.stage: 2`): starts from stage one's run (`train.init_from`, its EMA weights with
  `recipe.init_ema`); two augmented views of every image go through one forward as 2B images with
  duplicated targets; loss = classification + `weight` x contrastive, where the contrastive term is
  supervised contrastive over every (image, positive label) slot, positives being the same label in
  any other slot (other images and the other view), through `fastmlic.kernels.supcon_loss`. The
  projector (Linear -> ReLU -> Linear to `proj_dim`, L2-normalised) exists in stage 2 only.
- Both stages in one command: `python -m fastmlic.pipeline --cfg mulcon_stage2_<dataset>` trains
  `recipe.first_stage` in PIPELINE/stage1, then this config in PIPELINE/stage2 from stage one's
  last.pt, resumably (see `first_stage_config` for what each stage takes from where).
- Under DDP the contrastive term sees the slots of the global batch (gathered with their gradient),
  so N processes equal one process on the global batch, as DataParallel did in the original.
- Backbone and attention blocks train at `optim.backbone_lr_factor` x lr (the official `lrp` 0.1);
  classifiers and projector at lr.

Where this differs from the official code, on purpose: weight decay skips biases and norm weights
(the trainer's rule; the original decays every parameter); the schedule steps per iteration (the
original steps per epoch; the presets' step decay lands at the same epochs); Cutout follows the
dataset config (optional in the original).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint, class_difference
from ..config import Config, ConfigError, load_config
from ..distributed import gather_with_grad
from ..errors import InputError
from ..kernels import supcon_loss
from ..models import HEADS, Features
from ..run import epoch_state
from .base import RECIPES, DataRequest, Recipe, RecipeModule, Stage, Term, stage_config

# --------------------------------------------------------------------------- both stages in one pipeline

# what stage one takes from its own preset (whole sections, and single keys); every other key (shards,
# classes, image size, backbone and head, device, precision, seed...) comes from the stage-two config
# with the command line's overrides, so the two runs see the same data and build the same model. Stage
# two's batch holds two views of each image, so the presets give stage one its own batch size.
FIRST_STAGE_SECTIONS = ("loss", "optim", "ema", "recipe")
FIRST_STAGE_KEYS = {
    # its batch and augmentation (the official stage one crops: RandomResizedCrop(0.875, 1.0))
    "data": ("batch_size", "resize", "crop_scale", "hflip", "randaugment_n", "randaugment_m", "cutout"),
    "train": ("epochs", "init_from", "keep_epochs", "result", "select_from"),
}


def first_stage_preset(cfg: Config) -> Config:
    """The config `recipe.first_stage` names, checked to be a MulCon stage one."""
    name = cfg.recipe.first_stage
    if cfg.recipe.stage != 2:
        raise ConfigError(f"recipe.first_stage={name!r} is for recipe.stage=2 (it names the stage before it)")
    try:
        first = load_config(name)  # a stage one has no first_stage of its own: no chain to follow
    except (ConfigError, FileNotFoundError) as e:
        raise ConfigError(f"recipe.first_stage={name!r}: {e}") from None
    if first.recipe.name != "mulcon" or first.recipe.stage != 1:
        raise ConfigError(f"recipe.first_stage={name!r} is recipe {first.recipe.name}"
                          f"{f' stage {first.recipe.stage}' if first.recipe.name == 'mulcon' else ''}; "
                          "name a MulCon stage-one preset (mulcon_stage1_<dataset>)")  # fmt: skip
    if cfg.recipe.first_stage_epoch > first.train.epochs:
        raise ConfigError(f"recipe.first_stage_epoch={cfg.recipe.first_stage_epoch}: {name} trains "
                          f"{first.train.epochs} epochs")  # fmt: skip
    return first


def first_stage_config(cfg: Config, folder: Path) -> Config:
    """Stage one: FIRST_STAGE_SECTIONS and FIRST_STAGE_KEYS from the `recipe.first_stage` preset, the
    rest from `cfg`."""
    own, mapping = first_stage_preset(cfg).to_dict(), cfg.to_dict()
    for section in FIRST_STAGE_SECTIONS:
        mapping[section] = own[section]
    for section, keys in FIRST_STAGE_KEYS.items():
        mapping[section] = {**mapping[section], **{k: own[section][k] for k in keys}}
    epoch = cfg.recipe.first_stage_epoch
    if epoch and epoch not in mapping["train"]["keep_epochs"]:  # the state stage two starts from stays
        mapping["train"]["keep_epochs"] = sorted([*mapping["train"]["keep_epochs"], epoch])
    return stage_config(mapping, folder, source=f"recipe.first_stage {cfg.recipe.first_stage}")


def first_stage_state(cfg: Config, folder: Path) -> Path:
    """The state of stage one (run folder `folder`) that stage two starts from."""
    epoch = cfg.recipe.first_stage_epoch
    return epoch_state(folder, epoch) if epoch else folder / "last.pt"


def second_stage_config(cfg: Config, root: Path) -> Config:
    """Stage two: `cfg`, starting from stage one's state at `recipe.first_stage_epoch` (its last.pt for
    0), its EMA weights with `recipe.init_ema`."""
    mapping = cfg.to_dict()
    mapping["train"] = {**mapping["train"], "init_from": str(first_stage_state(cfg, root / "stage1"))}
    return stage_config(mapping, root / "stage2")


def label_contrastive_loss(
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.2,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss over label slots. `embeddings` [B, C, P] L2-normalised, `targets`
    [B, C] multi-hot (the rows of two views stacked as 2B), `ignore` [B, C] bool or None. Anchors are
    the slots with target 1 that are not ignored; positives of an anchor are the other anchors of the
    same label; the denominator runs over every other anchor. Returns the mean over anchors (an
    anchor without positives adds 0), fp32."""
    selected = targets > 0.5
    if ignore is not None:
        selected &= ~ignore
    image_idx, label_idx = selected.nonzero(as_tuple=True)
    return supcon_loss(embeddings[image_idx, label_idx], label_idx, temperature=temperature,
                       base_temperature=temperature)  # fmt: skip


# --------------------------------------------------------------------------- the head


def _init_linear(module: nn.Module) -> None:
    """The official `init_net`: every Linear layer N(0, 0.02), zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


class MAB(nn.Module):
    """Set Transformer's multihead attention block as MulCon's code writes it: queries, keys and values
    projected to `dim`; the softmax scaled by the whole width sqrt(dim) (not per head); the projected
    queries added back; layer norm; a ReLU feed-forward residual; layer norm. Heads are split over the
    channels, head h holding channels [h * dim / heads, (h + 1) * dim / heads)."""

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"mulcon head: width {dim} is not divisible by model.heads={heads}")
        self.dim, self.heads = dim, heads
        self.fc_q, self.fc_k, self.fc_v = nn.Linear(dim_q, dim), nn.Linear(dim_k, dim), nn.Linear(dim_k, dim)
        self.ln0, self.ln1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc_o = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, dim] -> [B, heads, N, dim / heads]
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, need_weights: bool = False):
        q = self._split(self.fc_q(q))
        key, value = self._split(self.fc_k(k)), self._split(self.fc_v(k))
        scale = 1 / math.sqrt(self.dim)
        weights = None
        if need_weights:
            weights = torch.softmax(q @ key.transpose(-2, -1) * scale, dim=-1)
            attended = weights @ value
        else:
            attended = F.scaled_dot_product_attention(q, key, value, scale=scale)
        out = self.ln0((q + attended).transpose(1, 2).flatten(2))
        out = self.ln1(out + F.relu(self.fc_o(out)))
        return out, (weights.mean(1) if need_weights else None)  # attention averaged over heads


class SAB(MAB):
    def __init__(self, dim: int, heads: int):
        super().__init__(dim, dim, dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x, x)[0]


@HEADS.register("mulcon")
class MulConHead(nn.Module):
    """SAB -> SAB over the pixel tokens, label queries -> MAB over the pixels, SAB over the labels."""

    outputs = ("logits", "label_features", "attention")
    model_keys = ("embed_dim", "heads")
    per_class = ("queries", "class_weight", "class_bias")

    def __init__(self, num_features: int, num_classes: int, embed_dim: int = 1024, heads: int = 4, **_):
        super().__init__()
        self.embed_dim = embed_dim
        self.pixels = nn.Sequential(SAB(num_features, heads), SAB(num_features, heads))
        self.mab = MAB(embed_dim, num_features, embed_dim, heads)
        self.labels = SAB(embed_dim, heads)
        self.class_weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        self.class_bias = nn.Parameter(torch.zeros(num_classes))
        _init_linear(self)
        nn.init.normal_(self.class_weight, 0.0, 0.02)
        self.queries = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.queries.view(1, num_classes, embed_dim))  # the official [1, C, E]

    def forward(self, features: Features, return_attention: bool = False) -> dict:
        x = self.pixels(features.tokens)
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        h, attention = self.mab(queries, x, need_weights=return_attention)
        h = self.labels(h)  # [B, C, E]
        out = {"logits": (h * self.class_weight).sum(-1) + self.class_bias, "label_features": h}
        if return_attention:
            out["attention"] = attention  # [B, C, N]
        return out


# --------------------------------------------------------------------------- the recipe


class MulConModule(RecipeModule):
    """The MLIC model, plus the projector in stage 2."""

    def __init__(self, model, proj_dim: int | None):
        super().__init__(model)
        self.stage = 1 if proj_dim is None else 2
        self.projector = None
        if proj_dim is not None:
            width = model.head.embed_dim
            self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True),
                                           nn.Linear(width, proj_dim))  # fmt: skip
            _init_linear(self.projector)

    def forward(self, images: torch.Tensor) -> dict:
        out = self.model(images)
        if self.projector is not None:
            out["label_embeddings"] = F.normalize(self.projector(out["label_features"]), dim=-1)
        return out

    def backbone_parameters(self) -> list[nn.Parameter]:
        """What trains at optim.backbone_lr_factor x lr (the official lrp), as each stage's
        `get_config_optim` groups it: in stage 1 the backbone only (the attention blocks and label queries
        learn at lr, from scratch: coco_att_stage_one_model.py), in stage 2 the backbone and the attention
        (coco_att_con_stage_two_model.py); the per-label classifiers and the projector at lr."""
        if self.stage == 1:
            return self.model.backbone_parameters()
        classifier = {id(self.model.head.class_weight), id(self.model.head.class_bias)}
        attention = [p for p in self.model.head.parameters() if id(p) not in classifier]
        return self.model.backbone_parameters() + attention


@RECIPES.register("mulcon")
class MulCon(Recipe):
    head_outputs = ("logits", "label_features")

    @classmethod
    def read_released(cls, path, cfg, classes, options):
        from .mulcon_released import read_networks

        return read_networks(path, cfg, classes, options)

    @classmethod
    def check(cls, cfg) -> None:
        r = cfg.recipe
        if r.init_ema and not (r.stage == 2 and cfg.train.init_from):
            raise ConfigError("recipe.init_ema needs recipe.stage=2 and train.init_from (stage 1's last.pt)")
        if r.first_stage:
            first_stage_preset(cfg)  # a wrong preset fails now, not after stage one has trained

    @classmethod
    def stages(cls, cfg: Config, root: Path) -> list[Stage]:
        """Stage two with `recipe.first_stage`: stage1, then stage2 from its last.pt; else one run."""
        if not cfg.recipe.first_stage:
            return super().stages(cfg, root)
        first = Stage("stage1", root / "stage1", config=partial(first_stage_config, cfg, root / "stage1"),
                      outputs=(first_stage_state(cfg, root / "stage1"),))  # what stage two starts from
        return [first, Stage("stage2", root / "stage2", needs=("stage1",),
                             config=partial(second_stage_config, cfg, root),
                             outputs=(root / "stage2" / "best.pt",))]  # fmt: skip

    @classmethod
    def data_request(cls, cfg) -> DataRequest:
        return dataclasses.replace(super().data_request(cfg), views=2 if cfg.recipe.stage == 2 else 1)

    def build_module(self, trained: dict | None = None) -> MulConModule:
        model = super().build_module().model
        return MulConModule(model, self.cfg.recipe.proj_dim if self.cfg.recipe.stage == 2 else None)

    def initial_weights(self, ckpt: Checkpoint, what: str) -> dict:
        if self.cfg.recipe.stage == 2:  # stage two continues stage one: the same classes, in order
            difference = class_difference(self.classes, ckpt.classes)
            if difference:
                raise InputError(f"{what}: stage two needs stage one's classes; {difference}")
        if not self.cfg.recipe.init_ema:
            return ckpt.model
        if ckpt.ema is None:
            raise InputError(f"{what}: recipe.init_ema asks for EMA weights, which this checkpoint does "
                             "not hold (use stage one's last.pt, trained with ema.enabled)")
        return {k.removeprefix("module."): v for k, v in ckpt.ema.items()}  # ModelEmaV3 keeps .module

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        if self.cfg.recipe.stage == 1:
            return {"cls": self.classification(net(batch.images)["logits"], batch)}
        r, views = self.cfg.recipe, len(batch.views)
        out = net(torch.cat(batch.views))  # one forward of V x B images
        targets = batch.targets.repeat(views, 1)
        ignore = batch.ignore.repeat(views, 1) if batch.ignore is not None else None
        cls = self.criterion(out["logits"], targets, ignore)
        # every rank's slots, differentiable for this rank's: the term of the global batch
        embeddings = gather_with_grad(out["label_embeddings"], ctx.world_size)
        all_targets = gather_with_grad(targets, ctx.world_size)
        all_ignore = None
        if ignore is not None and self.cfg.loss.use_ignore:
            all_ignore = gather_with_grad(ignore.to(torch.uint8), ctx.world_size).bool()
        contrastive = label_contrastive_loss(embeddings.float(), all_targets, r.temperature, all_ignore)
        return {"cls": Term(cls, self.criterion.reduction),
                "contrastive": Term(contrastive, "global", weight=r.weight)}  # fmt: skip
