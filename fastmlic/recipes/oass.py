"""`oass`: object-aware self-supervision on a Puzzle-CAM base (Xu et al., "Object-Aware Self-Supervised
Multi-Label Learning", ICIP 2022). The paper's repository holds only a README, so no OASS code exists to
follow; its base, Puzzle-CAM (Jo & Yu, ICIP 2021; shjo-april/PuzzleCAM: `core/networks.py`,
`core/puzzle_utils.py`, `tools/ai/torch_utils.py`, `train_classification_with_puzzle.py`, read for this
file), is public. Each step, with where it comes from:

From Puzzle-CAM's code:
- Head `cam`: a 1x1 convolution without bias (Kaiming-normal init) on the backbone's feature map gives the
  CAMs [B, C, H, W]; the logits are their spatial mean. The presets run the ResNet at output stride 16
  (`model.output_stride: 16`; Puzzle-CAM sets the last stage's stride to 1, timm dilates it instead).
- `tile(x, pieces)` / `merge(tiles, pieces)`: `tile_features` / `merge_features` (a square grid of pieces,
  piece-major along the batch), one reshape each and exact inverses; Puzzle-CAM silently drops remainder
  rows when the side does not divide, here that is an error.
- Losses (`loss_option cl_pcl_re`, `level feature`, `re_loss_option masking`): the classification loss on
  the full image's logits; the same loss on the spatial mean of the merged tile CAMs (`pcl`, weight
  `alpha_p`); the L1 distance between the full CAMs and the merged tile CAMs, masked by the labels and
  averaged over every cell (`re`), with weight `alpha_re x min(1, step / (alpha_schedule_re x total))`.
  The presets use BCE averaged over cells (MultiLabelSoftMarginLoss), SGD Nesterov with the poly schedule
  (power 0.9), the classifier at 10x the backbone's learning rate, 15 epochs, batch 32, 512 px.
- The normalised CAM (`make_cam`: ReLU, divided by each channel's maximum), used for the instances below.

From the paper's text (one sentence each; where it is silent, the choice is ours and marked "ours"):
- Key points on the CAMs, four strategies: `keypoints(cams, strategy, k)`. `max`: the peak of the
  class-merged CAM; `cmax`: the peak of each class; `ctopk`: the centre of each class's k highest local
  maxima; `ctopk_w`: that centre weighted by the normalised CAM values. Ours: a local maximum is a cell not
  below its 8 neighbours (3x3 max pooling, so every cell of a plateau counts); with fewer than k maxima all
  are used; ties go to the first cell in row-major order; a channel without variation (a class not learnt
  yet) has no peak and gets the grid's centre. Results are (row, column) in grid cells, float.
- Object-aware self-supervision: object-centred patches around the key points of the image's present
  classes (one per image with `max`), whose features an EMA teacher (no gradient) extracts, supervise the
  student's features at the same places. Ours: the key points come from the teacher's CAMs of the full
  image; a patch is a square of `patch_scale` x the image side centred on the key point's cell (moved
  inside the image at the border), cut from the same augmented image at full resolution; the teacher's
  patch feature is the mean of its feature map on the patch, the student's is RoIAlign's mean of its
  full-image feature map over the same box; the term is 1 - cosine similarity, averaged over the patches,
  with weight `alpha_ss`. The teacher starts as the student's initial weights, follows it with decay
  `teacher_decay` after every optimiser step, runs in eval mode, and is saved in `last.pt` for resume.
- Class-specific instances, proposal-free, carrying the image-level labels to instances. Ours: for each
  present class c of an image, the instance is the student's feature map averaged with the teacher's
  normalised CAM of c as weights; the CAM classifier scores it, and BCE with target "c only" (the image's
  other present classes left out: the instance may overlap them) trains it, averaged over instances and
  kept cells, with weight `alpha_csi`.
- Evaluation and prediction use the full image's logits; reports show the normalised CAMs as attention.

Differences from Puzzle-CAM on purpose: biases train at the backbone's learning rate (Puzzle-CAM: 2x);
the images are random-resized crops of the squash-resized image (Puzzle-CAM: random long side 320-640,
then a random 512 crop with padding); BatchNorm is trained (Puzzle-CAM's `--mode normal`, as its default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..models import HEADS, Features, build_model
from .base import RECIPES, Recipe, RecipeModule, Term
from .oass_config import STRATEGIES, Strategy

# --------------------------------------------------------------------------- Puzzle-CAM's tiles


def _side(pieces: int, h: int, w: int) -> int:
    n = math.isqrt(pieces)
    if pieces < 1 or n * n != pieces:
        raise ValueError(f"pieces={pieces}: must be a square number (4 = a 2 x 2 grid)")
    if h % n or w % n:
        raise ValueError(f"a {h} x {w} map does not split into {n} x {n} equal pieces")
    return n


def tile(x: torch.Tensor, pieces: int) -> torch.Tensor:
    """[B, C, H, W] -> [pieces x B, C, H / n, W / n], n = sqrt(pieces): piece p of image b at row
    p x B + b, pieces in row-major order over the n x n grid (Puzzle-CAM's order)."""
    b, c, h, w = x.shape
    n = _side(pieces, h, w)
    grid = x.reshape(b, c, n, h // n, n, w // n).permute(2, 4, 0, 1, 3, 5)  # [n, n, B, C, h, w]
    return grid.reshape(pieces * b, c, h // n, w // n)


def merge(tiles: torch.Tensor, pieces: int) -> torch.Tensor:
    """The inverse of `tile`: [pieces x B, C, h, w] -> [B, C, n x h, n x w]."""
    total, c, h, w = tiles.shape
    n = _side(pieces, h * math.isqrt(pieces), w * math.isqrt(pieces))  # checks that pieces is a square
    if total % pieces:
        raise ValueError(f"{total} tiles do not make whole {pieces}-piece images")
    b = total // pieces
    return tiles.reshape(n, n, b, c, h, w).permute(2, 3, 0, 4, 1, 5).reshape(b, c, n * h, n * w)


# --------------------------------------------------------------------------- key points


def _grid(h: int, w: int, device) -> torch.Tensor:
    """(row, column) of every cell in row-major order: [H x W, 2] float."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], 1).float()


def _peaks(cams: torch.Tensor) -> torch.Tensor:
    """Row-major first maximum of each channel: [B, C, 2]."""
    b, c, h, w = cams.shape
    index = cams.flatten(2).argmax(2)  # the first maximal index (documented for torch.argmax)
    return _grid(h, w, cams.device)[index]


def _top_local_maxima(cams: torch.Tensor, k: int, weighted: bool) -> torch.Tensor:
    """(Weighted) centre of each channel's k highest local maxima: [B, C, 2]."""
    b, c, h, w = cams.shape
    is_peak = F.max_pool2d(cams, 3, stride=1, padding=1) == cams
    scores = torch.where(is_peak, cams, torch.full_like(cams, -torch.inf)).flatten(2)
    # a stable descending sort keeps equal values in row-major order: ties go to the first cell
    values, index = torch.sort(scores, dim=2, descending=True, stable=True)
    values, index = values[..., :k], index[..., :k]
    chosen = torch.isfinite(values).float()  # fewer than k maxima: the rest are -inf and weigh 0
    if weighted:
        flat = cams.flatten(2)
        low, high = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
        normalised = (torch.where(torch.isfinite(values), values, low) - low) / (high - low).clamp_min(1e-12)
        chosen = chosen * normalised
    points = _grid(h, w, cams.device)[index]  # [B, C, k, 2]
    # the channel's maximum is always chosen, with weight 1, so the sum is positive unless the channel is
    # flat, which `keypoints` replaces by the grid's centre
    return (points * chosen.unsqueeze(-1)).sum(2) / chosen.sum(2, keepdim=True).clamp_min(1e-12)


def keypoints(cams: torch.Tensor, strategy: Strategy = "cmax", k: int = 3) -> torch.Tensor:
    """Key points of class activation maps `cams` [B, C, H, W] (see the module docstring): [B, 1, 2]
    for `max`, [B, C, 2] otherwise; (row, column) in grid cells, float32."""
    if strategy not in STRATEGIES:
        raise ValueError(f"keypoint strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if cams.dim() != 4:
        raise ValueError(f"cams must be [B, C, H, W], got shape {tuple(cams.shape)}")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    cams = cams.detach().float()
    if strategy == "max":
        cams = cams.amax(1, keepdim=True)
    b, c, h, w = cams.shape
    if strategy in ("max", "cmax"):
        points = _peaks(cams)
    else:
        points = _top_local_maxima(cams, k, weighted=strategy == "ctopk_w")
    flat = cams.flatten(2)
    no_peak = (flat.amax(2) == flat.amin(2)).unsqueeze(-1)  # a channel without variation
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], device=cams.device)
    return torch.where(no_peak, centre.expand_as(points), points)


# --------------------------------------------------------------------------- patches and instances


def normalised_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Puzzle-CAM's `make_cam`: ReLU, then each channel divided by its maximum: values in [0, 1)."""
    cams = F.relu(cams)
    peak = cams.flatten(2).amax(2)[..., None, None]
    return F.relu(cams - eps) / (peak + eps)


def object_boxes(points: torch.Tensor, grid: tuple[int, int], image_hw: tuple[int, int],
                 scale: float) -> torch.Tensor:  # fmt: skip
    """Squares of `scale` x the image side centred on the cells `points` [P, 2] (row, column) of a
    feature grid, moved inside the image at the border: [P, 4] (x1, y1, x2, y2) in whole pixels."""
    (gh, gw), (h, w) = grid, image_hw
    side_h, side_w = max(1, round(scale * h)), max(1, round(scale * w))
    centre_y = (points[:, 0] + 0.5) * h / gh
    centre_x = (points[:, 1] + 0.5) * w / gw
    y1 = (centre_y - side_h / 2).round().clamp(0, h - side_h)
    x1 = (centre_x - side_w / 2).round().clamp(0, w - side_w)
    return torch.stack([x1, y1, x1 + side_w, y1 + side_h], 1)


def crop(images: torch.Tensor, rois: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
    """The pixels of whole-pixel boxes `rois` [P, 5] (image index, x1, y1, x2, y2) of size `side` (h, w):
    [P, 3, h, w]. RoIAlign with aligned corners samples each output pixel at an input pixel's centre, so
    this is an exact crop, batched."""
    from torchvision.ops import roi_align  # not at import: torchvision takes seconds (--help loads this)

    if not len(rois):
        return images.new_zeros(0, images.shape[1], *side)
    return roi_align(images.float(), rois.float(), side, aligned=True, sampling_ratio=1).to(images.dtype)


def instance_loss(logits: torch.Tensor, classes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """BCE of class-specific instances: `logits` [P, C] of instance p, made for class `classes[p]` of an
    image whose present classes are `present` [P, C] (bool). Target 1 for its own class, 0 for the
    classes absent from the image; the image's other present classes are left out (the instance may
    overlap them). The mean over the kept cells (0 without instances), fp32."""
    target = F.one_hot(classes, logits.shape[1]).to(torch.float32)
    keep = (~present | target.bool()).float()
    cells = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * keep
    return cells.sum() / keep.sum().clamp_min(1)


# --------------------------------------------------------------------------- the head and module


@HEADS.register("cam")
class CAMHead(nn.Module):
    """Class activation maps: a 1x1 convolution (no bias) on the feature map, and their spatial mean as
    the logits (the same as the classifier on the pooled features)."""

    model_keys = ()
    outputs = ("logits", "cams", "attention")
    per_class = ("classifier.weight",)

    def __init__(self, num_features: int, num_classes: int, **_):
        super().__init__()
        self.classifier = nn.Conv2d(num_features, num_classes, 1, bias=False)
        nn.init.kaiming_normal_(self.classifier.weight)

    def cams(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(feature_map)

    def classify(self, vectors: torch.Tensor) -> torch.Tensor:
        """The CAM classifier on feature vectors [N, D]: logits [N, C]."""
        return F.linear(vectors, self.classifier.weight.flatten(1))

    def forward(self, features: Features, return_attention: bool = False) -> dict:
        cams = self.cams(features.as_map())
        out = {"logits": cams.mean((2, 3)), "cams": cams}
        if return_attention:
            out["attention"] = normalised_cams(cams.float()).flatten(2)  # [B, C, N]
        return out


class OASSModule(RecipeModule):
    """The CAM model; in training, in the same forward, the tiles' merged CAMs, the feature map's mean
    over boxes, and class-specific instances scored by the classifier."""

    def forward(self, images: torch.Tensor, pieces: int = 0, rois: torch.Tensor | None = None,
                instances: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:  # fmt: skip
        backbone, head = self.model.backbone, self.model.head
        features = backbone(images)
        feature_map = features.as_map()
        out = {**head(features), "grid": features.grid}  # logits and cams, as evaluation computes them
        if pieces:
            out["merged_cams"] = merge(head.cams(backbone(tile(images, pieces)).as_map()), pieces)
        if rois is not None:
            scale = features.grid[0] / images.shape[-2]
            from torchvision.ops import roi_align

            pooled = roi_align(feature_map.float(), rois.float(), 1, spatial_scale=scale, aligned=True)
            out["box_features"] = pooled.flatten(1)  # [P, D]: the map's mean over each box
        if instances is not None:
            image_index, weights = instances  # [P], [P, H, W]
            weighted = torch.einsum("phw,pdhw->pd", weights.to(feature_map.dtype), feature_map[image_index])
            vectors = weighted / weights.sum((1, 2)).clamp_min(1e-5).unsqueeze(1).to(weighted.dtype)
            out["instance_logits"] = head.classify(vectors)
        return out


# --------------------------------------------------------------------------- the recipe


@RECIPES.register("oass")
class OASS(Recipe):
    head_outputs = ("logits", "cams")

    def __init__(self, cfg, classes):
        super().__init__(cfg, classes)
        self.teacher = None  # timm ModelEmaV3 of the student, made by `setup`

    @classmethod
    def check(cls, cfg) -> None:
        r = cfg.recipe
        if r.keypoint not in STRATEGIES:
            raise ConfigError(f"recipe.keypoint={r.keypoint!r}: use one of {', '.join(STRATEGIES)}")
        if r.pieces < 4 or math.isqrt(r.pieces) ** 2 != r.pieces:
            raise ConfigError(f"recipe.pieces={r.pieces} must be a square number of at least 4 (4 = 2 x 2)")

    def build_module(self, trained: dict | None = None) -> OASSModule:
        return OASSModule(build_model(self.cfg.model, len(self.classes)))

    def setup(self, module: OASSModule, ctx) -> None:
        from timm.utils import ModelEmaV3

        self.teacher = ModelEmaV3(module, decay=self.cfg.recipe.teacher_decay)
        self.teacher.requires_grad_(False)

    def reconstruction_weight(self, step: int, total_steps: int) -> float:
        """Puzzle-CAM's alpha schedule: linear from 0 to alpha_re over alpha_schedule_re of training."""
        r = self.cfg.recipe
        if r.alpha_schedule_re == 0:
            return r.alpha_re
        return min(r.alpha_re * step / (total_steps * r.alpha_schedule_re), r.alpha_re)

    @torch.no_grad()
    def teacher_targets(self, teacher: OASSModule, images: torch.Tensor, present: torch.Tensor) -> dict:
        """From the teacher's view of the full images: the object-centred boxes `rois` [P, 5] around the
        key points of the present classes and the teacher's feature of each patch `patch_features`
        [P, D]; the class-specific instances (`instance_image`, `instance_class`, their CAM weights
        `instance_weights` [I, H, W])."""
        r = self.cfg.recipe
        out = teacher(images)
        cams = out["cams"].float()
        points = keypoints(cams, r.keypoint, r.topk)
        image_index, class_index = present.nonzero(as_tuple=True)
        if r.keypoint == "max":  # one class-merged key point per image that has a present class
            box_image = present.any(1).nonzero()[:, 0]
            box_points = points[box_image, 0]
        else:
            box_image, box_points = image_index, points[image_index, class_index]
        h, w = images.shape[-2:]
        boxes = object_boxes(box_points, out["grid"], (h, w), r.patch_scale)
        rois = torch.cat([box_image.unsqueeze(1).float(), boxes], 1)
        side = (int(boxes[0, 3] - boxes[0, 1]), int(boxes[0, 2] - boxes[0, 0])) if len(boxes) else (1, 1)
        patches = crop(images, rois, side).contiguous(memory_format=torch.channels_last)
        patch_features = teacher.model.backbone(patches).tokens.mean(1).float() if len(rois) else None
        return {"rois": rois, "patch_features": patch_features, "instance_image": image_index,
                "instance_class": class_index,
                "instance_weights": normalised_cams(cams)[image_index, class_index]}  # fmt: skip

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        r = self.cfg.recipe
        teacher = self.teacher.module
        present = batch.targets > 0.5
        if batch.ignore is not None:
            present &= ~batch.ignore
        try:
            t = self.teacher_targets(teacher, batch.images, present)
            out = net(batch.images, pieces=r.pieces, rois=t["rois"],
                      instances=(t["instance_image"], t["instance_weights"]))  # fmt: skip
        except RuntimeError as e:
            if "input size" not in str(e):  # the backbone's own message for an input below its stride
                raise
            h = batch.images.shape[-2]
            raise ConfigError(f"data.image_size={h}: the {h // math.isqrt(r.pieces)} px tiles (recipe.pieces="
                             f"{r.pieces}) or {round(r.patch_scale * h)} px patches (recipe.patch_scale="
                             f"{r.patch_scale}) are too small for {self.cfg.model.backbone}: {e}") from None
        cams, merged = out["cams"], out["merged_cams"]
        if merged.shape != cams.shape:
            side = math.isqrt(r.pieces)
            raise ConfigError(f"recipe.pieces={r.pieces}: the full image's CAMs are {tuple(cams.shape[-2:])} "
                             f"cells, the merged tiles' {tuple(merged.shape[-2:])}; use a data.image_size "
                             f"that is a multiple of {side} x the backbone's stride")  # fmt: skip
        mask = batch.targets[:, :, None, None]
        reconstruction = ((cams.float() - merged.float()).abs() * mask).mean()
        boxes = out["box_features"]
        if t["patch_features"] is None:  # no present class in this batch: a zero that keeps the graph
            consistency = boxes.sum() * 0.0
        else:
            consistency = (1 - F.cosine_similarity(boxes.float(), t["patch_features"], dim=1)).mean()
        instances = instance_loss(out["instance_logits"], t["instance_class"], present[t["instance_image"]])
        pieces = self.classification(merged.mean((2, 3)), batch)
        pieces.weight = r.alpha_p
        return {
            "cls": self.classification(out["logits"], batch),
            "pcl": pieces,
            "re": Term(reconstruction, "mean", weight=self.reconstruction_weight(ctx.step, ctx.total_steps)),
            "ss": Term(consistency, "mean", weight=r.alpha_ss),
            "csi": Term(instances, "mean", weight=r.alpha_csi),
        }

    def after_step(self, module: RecipeModule, ctx) -> None:
        self.teacher.update(module, step=ctx.step)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
