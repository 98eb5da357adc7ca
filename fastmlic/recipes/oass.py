"""`oass`: object-aware self-supervised multi-label learning (Xu et al., ICIP 2022), as its released code
computes it: github Akimoto-Cris/OASSMLL @ 19b22d2 (`train_classification_with_puzzle_{max,cMax_ema,
cTopk_ema,cTopk_w_ema}.py`, `core/networks.py`, `tools/ai/*.py`; built on shjo-april/PuzzleCAM), read
for this file. Short names below: `max.py`, `cMax.py`, `cTopk.py`, `cTopk_w.py` for the four scripts.

Official, function by function (each public, pure, and tested against a literal transcription of the
official loops):
- The network (`core/networks.py:55-91`): a ResNet-50 whose last stage runs at stride 1 without dilation
  (strides 2, 2, 2, 1: output stride 16); a 1x1 convolution without bias (Kaiming-normal) gives the raw
  CAMs; the class-specific-instance head gives the logits, in training and evaluation: for each class
  c, the feature map weighted by c's normalised CAM (`make_cam`: ReLU, divided by its maximum; not
  detached), through c's own BatchNorm and 1x1 convolution, averaged over the grid (`csi_logits`).
- Key points (`keypoints`), from the student's label-masked normalised CAMs upsampled bilinearly to the
  image: `max` one per image (the first maximum of the class-wise maximum, `max.py:269-287`), `cmax` one
  per present class (`cMax.py:291-308`), `ctopk` the floor mean of the top k = 5 local maxima
  (`peak_local_max(min_distance=20)`) within 128 px of the map's maximum (`cTopk.py:300-357`), `ctopk_w`
  their CAM-weighted mean with each term truncated (`cTopk_w.py:298-348`); a point in row or column 0,
  or none, is the image's centre.
- Cuts (`cut_at`, `merge_cuts`, `cMax.py:314-394`): the image cut into four pieces at the key point,
  each resized (nearest) to half the image side; the pieces' raw CAMs, from the EMA teacher (the student
  for `max`), are resized (nearest) back onto the full grid around the point.
- Losses (`cMax.py:396-417`): MultiLabelSoftMarginLoss of the CSI logits; for each cut, the same loss of
  the merged CAMs' mean against the cut's target (`piece_class_loss`: the image's labels for `max`, the
  cut's class otherwise) and the L1 distance of the student's raw CAMs to the merged ones masked by that
  target (`reconstruction_loss`), both averaged over the cuts; weights `alpha_p` and `alpha_re` reached
  linearly over `alpha_schedule_re` of training. With an EMA teacher the pieces' term has no gradient.
- The EMA teacher (`ema_update`, `cMax.py:95-102, 425`): decay min(1 - 1/(t + 1), 0.99) after the
  optimiser step t, parameters only, the teacher always in train mode.
- The pieces go through the network four at a time, so every BatchNorm normalises by a cut's four
  pieces (`ghost_batchnorm`: all cuts in one forward, statistics per group of four, running statistics
  updated as the official one forward per cut updates them).
- Optimiser: SGD as `PolyOptimizer` builds it (tools/ai/optim_utils.py:5-6 passes weight_decay where
  SGD expects momentum: momentum 1e-4, Nesterov), the poly schedule (power 0.9), four groups
  (core/abc_modules.py:27-50): backbone weights (BatchNorm's included) at `backbone_lr_factor` x lr with
  weight decay, backbone biases at twice that without, new weights at lr with, new biases at 2 x lr
  without (`parameter_groups`).

Kept although they are bugs, because the published numbers come from them (a key turns each fix on):
the `ctopk` radius test uses the row twice, (py - my)^2 + (py - mx)^2 < 128^2, when a CAM has more than
k peaks (`cTopk.py:342-343`; `recipe.radius_typo: false` fixes it); the momentum is 1e-4
(`optim.momentum: 0.9` fixes it).

Generalised: any class count and ResNet-like backbone (the official hard-codes 20 classes, 2048
channels, a 32 x 32 grid, 16 x 16 pieces); the grid is the image over the backbone's stride, the pieces
half the image. Fixed: no cut (an image batch without labels) gives losses of 0, not a division by
zero; peaks are ordered by a stable sort (numpy's quicksort is stable only up to 16 values); the
teacher starts as a copy of the student (the official builds its own random head, which only the first
step sees); evaluation scores every validation image (the official `drop_last` leaves out 9).
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..models import HEADS, Features, build_model
from .base import RECIPES, Recipe, RecipeModule, Term
from .oass_config import STRATEGIES

RADIUS = 128  # ctopk: pixels from the map's maximum within which a peak counts (cTopk.py:325)
MIN_DISTANCE = 20  # ctopk, ctopk_w: peak_local_max's spacing and border, in pixels (cTopk.py:305)


# --------------------------------------------------------------------------- key points


def make_cam(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """tools/ai/torch_utils.py `make_cam`: ReLU, then relu(x - eps) / (max over the map + eps), per image
    and class: [B, C, h, w] in [0, 1)."""
    cams = F.relu(cams)
    peak = cams.flatten(2).amax(2)[..., None, None]
    return F.relu(cams - eps) / (peak + eps)


def _size(image_size, grid: tuple[int, int]) -> tuple[int, int]:
    if image_size is None:
        return 16 * grid[0], 16 * grid[1]
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def _argmax(cam: np.ndarray) -> tuple[int, int]:
    """The first maximum in row-major order (np.argmax)."""
    return tuple(int(v) for v in np.unravel_index(np.argmax(cam), cam.shape))


def _peaks(cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """skimage's local maxima, at least MIN_DISTANCE apart and from the border, and their values in
    descending order (a stable sort: equal values keep peak_local_max's order)."""
    from skimage.feature import peak_local_max

    coords = peak_local_max(cam, min_distance=MIN_DISTANCE)
    values = cam[coords[:, 0], coords[:, 1]] if len(coords) else np.zeros(0, cam.dtype)
    return coords, values


def _ctopk(cam: np.ndarray, k: int, centre: tuple[int, int], radius_typo: bool) -> tuple[int, int]:
    coords, values = _peaks(cam)
    if not len(coords):
        return centre
    order = np.argsort(-values, kind="stable")
    my, mx = _argmax(cam)
    chosen = order if len(coords) <= k else order[:k]
    typo = radius_typo and len(coords) > k  # the official tests the row twice in this branch only
    column = 0 if typo else 1
    near = [i for i in chosen if (coords[i, 0] - my) ** 2 + (coords[i, column] - mx) ** 2 < RADIUS**2]
    if not near:
        return centre
    y = sum(int(coords[i, 0]) for i in near) // len(near)  # floor means
    x = sum(int(coords[i, 1]) for i in near) // len(near)
    return centre if y == 0 or x == 0 else (y, x)


def _ctopk_w(cam: np.ndarray, k: int, centre: tuple[int, int]) -> tuple[int, int]:
    coords, values = _peaks(cam)
    if not len(coords):
        return centre
    order = np.argsort(-values, kind="stable")
    chosen = order if len(coords) <= k else order[:k]
    total = 0.0  # float64, summed in the official order: peaks as found (<= k) or by value (> k)
    for i in (range(len(coords)) if len(coords) <= k else chosen):
        total += float(values[i])
    y = sum(int(int(coords[i, 0]) * float(values[i]) / total) for i in chosen)  # each term truncated
    x = sum(int(int(coords[i, 1]) * float(values[i]) / total) for i in chosen)
    return centre if y == 0 or x == 0 else (y, x)


def keypoints(cams: torch.Tensor, labels: torch.Tensor, strategy: str, k: int = 5, image_size=None, *,
              radius_typo: bool = True) -> list[list[tuple[int, int, int]]]:  # fmt: skip
    """Key points of raw CAMs `cams` [B, C, h, w] for the images' labels [B, C] (present where 1), in
    pixels of an `image_size` image (an int, (H, W), or None for (16 h, 16 w)): per image a list of
    (class, y, x), one (-1, y, x) for `max`, one per present class (ascending) otherwise. The fallback
    is (H // 2, W // 2). Nothing here has a gradient."""
    if strategy not in STRATEGIES:
        raise ValueError(f"keypoint strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if cams.dim() != 4 or labels.shape != cams.shape[:2]:
        raise ValueError(f"cams must be [B, C, H, W] and labels [B, C], got {tuple(cams.shape)}, "
                         f"{tuple(labels.shape)}")  # fmt: skip
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    h, w = _size(image_size, cams.shape[-2:])
    centre = (h // 2, w // 2)
    present = labels.detach().cpu() == 1
    normalised = make_cam(cams.detach().float())
    if strategy == "max":  # the class-wise maximum over the present classes, then upsampled
        normalised = (normalised * present[..., None, None].to(normalised)).amax(1, keepdim=True)
    maps = F.interpolate(normalised, size=(h, w), mode="bilinear", align_corners=False).cpu().numpy()
    points = []
    for b in range(len(maps)):
        if strategy == "max":
            y, x = _argmax(maps[b, 0])
            points.append([(-1, *(centre if y == 0 or x == 0 else (y, x)))])
            continue
        image = []
        for c in present[b].nonzero()[:, 0].tolist():
            if strategy == "cmax":
                y, x = _argmax(maps[b, c])
                y, x = centre if y == 0 or x == 0 else (y, x)
            elif strategy == "ctopk":
                y, x = _ctopk(maps[b, c], k, centre, radius_typo)
            else:
                y, x = _ctopk_w(maps[b, c], k, centre)
            image.append((c, y, x))
        points.append(image)
    return points


# --------------------------------------------------------------------------- cuts


def cut_at(image: torch.Tensor, point: tuple[int, int], size: tuple[int, int] = (256, 256)) -> torch.Tensor:
    """The image [C, H, W] cut into four at (y, x), top-left, top-right, bottom-left, bottom-right, each
    resized (nearest, as F.interpolate's legacy 'nearest') to `size`: [4, C, *size]."""
    y, x = point
    pieces = [image[:, :y, :x], image[:, :y, x:], image[:, y:, :x], image[:, y:, x:]]
    return torch.cat([F.interpolate(p[None], size=size, mode="nearest") for p in pieces])


def merge_cuts(piece_cams: torch.Tensor, point: tuple[int, int], grid: tuple[int, int],
               stride: int = 16) -> torch.Tensor:  # fmt: skip
    """The four pieces' CAMs [4, C, h', w'] of a cut at image pixel (y, x), resized (nearest) onto the
    full grid (gh, gw) around the point's cell max(1, y // stride), max(1, x // stride): [C, gh, gw]."""
    gh, gw = grid
    my, mx = max(1, point[0] // stride), max(1, point[1] // stride)
    if not (my < gh and mx < gw):
        raise ValueError(f"cut at {point}: its cell ({my}, {mx}) must lie inside the {gh} x {gw} grid")
    sizes = [(my, mx), (my, gw - mx), (gh - my, mx), (gh - my, gw - mx)]  # TL, TR, BL, BR
    tl, tr, bl, br = (F.interpolate(p[None], size=s, mode="nearest")[0]
                      for p, s in zip(piece_cams, sizes, strict=True))  # fmt: skip
    return torch.cat([torch.cat([tl, tr], 2), torch.cat([bl, br], 2)], 1)


# --------------------------------------------------------------------------- the class-specific instances


def _csi_statistics(features: torch.Tensor, cams: torch.Tensor, groups: int = 1):
    """For x the feature map [B, D, h, w] and m the normalised CAMs [B, C, h, w]: the mean over each
    image's grid of x_d m_c, [B, C, D], and the per-(class, channel) mean and biased variance of x_d m_c
    over the images of each group and their grids, [G, C, D], fp32: BatchNorm's statistics of the masked
    maps, without the [B, C, D, h, w] tensor of the official loop."""
    with torch.autocast(features.device.type, enabled=False):
        x, m = features.float().flatten(2), cams.float().flatten(2)  # [B, D, N], [B, C, N]
        first = torch.einsum("bdn,bcn->bcd", x, m) / x.shape[2]  # [B, C, D]
        second = torch.einsum("bdn,bcn->bcd", x * x, m * m) / x.shape[2]
        b = x.shape[0]
        mean = first.view(groups, b // groups, *first.shape[1:]).mean(1)
        var = (second.view(groups, b // groups, *second.shape[1:]).mean(1) - mean**2).clamp_min(0)
    return first, mean, var


def csi_logits(features: torch.Tensor, cams: torch.Tensor, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
               conv_weight: torch.Tensor, running_mean: torch.Tensor | None = None,
               running_var: torch.Tensor | None = None, training: bool = True,
               eps: float = 1e-5) -> torch.Tensor:  # fmt: skip
    """The class-specific-instance logits [B, C] (core/networks.py:71-85): for each class c, the feature
    map [B, D, h, w] times c's normalised CAM (`make_cam` of the raw `cams` [B, C, h, w]), through c's
    BatchNorm (weight, bias [C, D]; batch statistics in training, the running ones [C, D] otherwise)
    and c's 1x1 convolution without bias ([C, D]), averaged over the grid. Gradients reach every input."""
    pooled, mean, var = _csi_statistics(features, make_cam(cams))
    if not training:
        mean, var = running_mean[None], running_var[None]
    scale = conv_weight * bn_weight / torch.sqrt(var[0] + eps)  # [C, D]
    return ((pooled - mean[0]) * scale).sum(2) + (conv_weight * bn_bias).sum(1)


# --------------------------------------------------------------------------- losses and the teacher


def _targets(points: list[list[tuple[int, int, int]]], labels: torch.Tensor) -> torch.Tensor:
    """Each cut's target [N, C], in the order of `points` flattened image-major: the image's labels for a
    `max` cut (class -1), the one-hot of the cut's class otherwise."""
    one_hot = torch.eye(labels.shape[1], device=labels.device)
    rows = [labels[b].float() if c < 0 else one_hot[c] for b, image in enumerate(points) for c, _, _ in image]
    return torch.stack(rows) if rows else labels.new_zeros(0, labels.shape[1]).float()


def _images(points: list[list[tuple[int, int, int]]]) -> list[int]:
    return [b for b, image in enumerate(points) for _ in image]


def reconstruction_loss(full_cams: torch.Tensor, merged_cams: torch.Tensor, points: list,
                        labels: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The mean over cuts of mean_{C x h x w}(|full[b] - merged_n| x t_n), t_n the cut's target (masked
    cells count in the denominator, cMax.py:402-403); 0 without cuts. fp32."""
    if not len(merged_cams):
        return full_cams.float().sum() * 0.0
    targets = _targets(points, labels)[..., None, None]
    full = full_cams[_images(points)].float()
    return ((full - merged_cams.float()).abs() * targets).mean((1, 2, 3)).mean()


def piece_class_loss(merged_cams: torch.Tensor, points: list, labels: torch.Tensor) -> torch.Tensor:
    """The mean over cuts of MultiLabelSoftMarginLoss(GAP(merged_n), t_n) (cMax.py:400); 0 without cuts."""
    if not len(merged_cams):
        return merged_cams.float().sum() * 0.0
    return F.multilabel_soft_margin_loss(merged_cams.float().mean((2, 3)), _targets(points, labels))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float = 0.99, step: int = 0) -> None:
    """cMax.py:95-102: after optimiser step `step` (0-based), teacher <- a x teacher + (1 - a) x student
    with a = min(1 - 1 / (step + 1), decay), parameters only (buffers stay the teacher's own)."""
    a = min(1 - 1 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(a).add_(s.detach(), alpha=1 - a)


@contextlib.contextmanager
def ghost_batchnorm(module: nn.Module, group: int):
    """Every BatchNorm2d of `module` in training normalises its input [G x group, C, H, W] by each group
    of `group` consecutive samples, and updates its running statistics as G forwards of one group each
    would: the official one forward per cut, batched."""

    def forward(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        if not bn.training:
            return nn.BatchNorm2d.forward(bn, x)
        n, c, h, w = x.shape
        g = n // group
        folded = x.view(g, group, c, h, w).transpose(0, 1).reshape(group, g * c, h, w)
        out = F.batch_norm(folded, None, None, bn.weight.repeat(g), bn.bias.repeat(g), True, 0.0, bn.eps)
        if bn.track_running_stats:
            with torch.no_grad():
                stats = folded.detach().float()
                means = stats.mean((0, 2, 3)).view(g, c)
                variances = stats.var((0, 2, 3), unbiased=True).view(g, c)
                # in place through .data: the buffers stay the module's own (DDP broadcasts those), and the
                # full image's forward, which saved them, is not invalidated (its training-mode backward
                # reads the batch statistics, never these)
                mean, var = bn.running_mean.data, bn.running_var.data
                for i in range(g):  # one update per cut, in order
                    mean.lerp_(means[i].to(mean), bn.momentum)
                    var.lerp_(variances[i].to(var), bn.momentum)
                bn.num_batches_tracked.data.add_(g)
        return out.view(group, g, c, h, w).transpose(0, 1).reshape(n, c, h, w)

    layers = [m for m in module.modules() if type(m) is nn.BatchNorm2d]
    for bn in layers:
        bn.forward = forward.__get__(bn)
    try:
        yield
    finally:
        for bn in layers:
            del bn.forward


# --------------------------------------------------------------------------- the head and the module


@HEADS.register("csi")
class CSIHead(nn.Module):
    """The CAMs (a 1x1 convolution without bias, Kaiming-normal) and the class-specific-instance logits
    (`csi_logits`); one BatchNorm and one 1x1 convolution per class, held as [C, D] tensors (the
    official ModuleLists keep PyTorch's defaults: BN weight 1, bias 0, the convolution U(+-1/sqrt(D)))."""

    model_keys = ()
    outputs = ("logits", "cams", "attention")
    per_class = ("classifier.weight", "bn_weight", "bn_bias", "running_mean", "running_var", "conv_weight")
    momentum, eps = 0.1, 1e-5  # nn.BatchNorm2d's

    def __init__(self, num_features: int, num_classes: int, **_):
        super().__init__()
        c, d = num_classes, num_features
        self.classifier = nn.Conv2d(d, c, 1, bias=False)
        nn.init.kaiming_normal_(self.classifier.weight)
        self.bn_weight, self.bn_bias = nn.Parameter(torch.ones(c, d)), nn.Parameter(torch.zeros(c, d))
        self.conv_weight = nn.Parameter(torch.empty(c, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))
        self.register_buffer("running_mean", torch.zeros(c, d))
        self.register_buffer("running_var", torch.ones(c, d))

    def forward(self, features: Features, return_attention: bool = False) -> dict:
        x = features.as_map()
        cams = self.classifier(x)
        out = {"logits": self.logits(x, cams), "cams": cams}
        if return_attention:
            out["attention"] = make_cam(cams.float()).flatten(2)  # [B, C, N]: the normalised CAMs
        return out

    def logits(self, x: torch.Tensor, cams: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """`csi_logits`, with batch statistics per group of images in training (updating the running
        statistics once per group, as that many forwards would), the running ones otherwise."""
        if not self.training:
            return csi_logits(x, cams, self.bn_weight, self.bn_bias, self.conv_weight, self.running_mean,
                              self.running_var, training=False, eps=self.eps)  # fmt: skip
        pooled, mean, var = _csi_statistics(x, make_cam(cams), groups)
        with torch.no_grad():
            count = x.shape[0] // groups * x.shape[2] * x.shape[3]
            for i in range(groups):
                self.running_mean.lerp_(mean[i].detach(), self.momentum)
                self.running_var.lerp_(var[i].detach() * count / max(count - 1, 1), self.momentum)
        per_image = x.shape[0] // groups
        mean, var = mean.repeat_interleave(per_image, 0), var.repeat_interleave(per_image, 0)
        scale = self.conv_weight * self.bn_weight / torch.sqrt(var + self.eps)
        return ((pooled - mean) * scale).sum(2) + (self.conv_weight * self.bn_bias).sum(1)


def stride_one_last_stage(backbone: nn.Module) -> None:
    """A timm ResNet's last stage at stride 1 without dilation: the official `strides=(2, 2, 2, 1)`
    (core/networks.py:23), output stride 16, the same weights."""
    block = getattr(backbone, "layer4", [None])[0]
    conv = getattr(block, "conv2", None) or getattr(block, "conv1", None)
    down = getattr(block, "downsample", None)
    if conv is None or down is None or not isinstance(down[0], nn.Conv2d):
        raise ConfigError("recipe.last_stride=1 needs a ResNet's last stage (timm resnet*: layer4); this "
                          "backbone has none: use recipe.last_stride=2 (with model.output_stride=16 for "
                          "a dilated stride 16)")  # fmt: skip
    for layer in (block.conv1, getattr(block, "conv2", None), down[0]):
        if isinstance(layer, nn.Conv2d) and layer.stride == (2, 2):
            layer.stride = (1, 1)


class OASSModule(RecipeModule):
    """The CSI model; with labels, in the same forward, the key points of its CAMs, the four pieces of
    each cut and, for `max` (no teacher), the pieces' CAMs."""

    def __init__(self, model, strategy: str, k: int, radius_typo: bool):
        super().__init__(model)
        self.strategy, self.k, self.radius_typo = strategy, k, radius_typo

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        features = self.model.backbone(images)
        out = {**self.model.head(features), "grid": features.grid}
        if labels is None:
            return out
        h, w = images.shape[-2:]
        points = keypoints(out["cams"], labels, self.strategy, self.k, (h, w), radius_typo=self.radius_typo)
        cuts = [cut_at(images[b], (y, x), (h // 2, w // 2))
                for b, image in enumerate(points) for _, y, x in image]  # fmt: skip
        out["points"] = points
        out["cuts"] = torch.cat(cuts) if cuts else images.new_zeros(0, images.shape[1], h // 2, w // 2)
        if self.strategy == "max":  # the student cuts for itself (max.py:332): gradients flow
            out["piece_cams"] = self.pieces(out["cuts"])
        return out

    def pieces(self, cuts: torch.Tensor) -> torch.Tensor:
        """Raw CAMs of the cuts' pieces [4 N, 3, h, w], four at a time as the official one forward per
        cut (BatchNorm by each cut's four pieces; the heads' statistics move as its forwards moved them)."""
        head = self.model.head
        if not len(cuts):
            return cuts.new_zeros(0, head.classifier.out_channels, 1, 1)
        with ghost_batchnorm(self.model.backbone, 4):
            x = self.model.backbone(cuts).as_map()
        cams = head.classifier(x)
        if self.training:  # the official forward also computes the pieces' CSI logits, moving its BN
            head.logits(x.detach(), cams.detach(), groups=len(cuts) // 4)
        return cams

    def parameter_groups(self, cfg) -> list[dict]:
        """core/abc_modules.py:27-50 with PolyOptimizer's rates (cMax.py:230-235): backbone weights
        (BatchNorm's included) at backbone_lr_factor x lr with weight decay, its biases at twice that
        without; the heads' weights at lr with, their biases at 2 x lr without."""
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = (name.startswith("model.backbone."), "weight" in name.rsplit(".", 1)[-1])
                groups.setdefault(key, []).append(p)
        factor = {True: cfg.backbone_lr_factor, False: 1.0}
        return [{"params": ps, "weight_decay": cfg.weight_decay if weight else 0.0,
                 "lr_factor": factor[backbone] * (1.0 if weight else 2.0)}
                for (backbone, weight), ps in sorted(groups.items(), reverse=True)]  # fmt: skip


# --------------------------------------------------------------------------- the recipe


@RECIPES.register("oass")
class OASS(Recipe):
    head_outputs = ("logits", "cams")

    def __init__(self, cfg, classes):
        super().__init__(cfg, classes)
        self.teacher: OASSModule | None = None  # the EMA teacher of the EMA strategies, made by `setup`

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.recipe.last_stride == 1 and cfg.model.output_stride:
            raise ConfigError(f"recipe.last_stride=1 sets the stride (16) itself: leave model.output_stride "
                              f"at 0 (now {cfg.model.output_stride})")  # fmt: skip
        if cfg.model.head != "csi":
            raise ConfigError(f"recipe.name=oass trains the class-specific-instance head: model.head=csi "
                              f"(now {cfg.model.head})")  # fmt: skip

    def build_module(self, trained: dict | None = None) -> OASSModule:
        r = self.cfg.recipe
        model = build_model(self.cfg.model, len(self.classes))
        if r.last_stride == 1:
            stride_one_last_stage(model.backbone.model)
        return OASSModule(model, r.keypoint, r.topk, r.radius_typo)

    def setup(self, module: OASSModule, ctx) -> None:
        if self.cfg.recipe.keypoint != "max":  # cMax.py:95-102: a teacher always in train mode, no gradient
            self.teacher = copy.deepcopy(module).train().requires_grad_(False)

    def reconstruction_weight(self, step: int, total_steps: int) -> float:
        """alpha_re reached linearly over alpha_schedule_re of training (cMax.py:409), from step 0."""
        r = self.cfg.recipe
        if r.alpha_schedule_re == 0:
            return r.alpha_re
        return min(r.alpha_re * step / (total_steps * r.alpha_schedule_re), r.alpha_re)

    def training_step(self, net, batch, ctx) -> dict[str, Term]:
        r = self.cfg.recipe
        if r.alpha_p == 0 and r.alpha_re == 0:  # no term reads the cuts: neither cut nor run the pieces
            return {"cls": self.classification(net(batch.images)["logits"], batch)}
        labels = (batch.targets > 0.5).float()
        out = net(batch.images, labels)
        points = out["points"]
        if self.teacher is None:
            piece_cams = out["piece_cams"]
        else:
            with torch.no_grad():
                piece_cams = self.teacher.pieces(out["cuts"])
        cams = out["cams"]
        grid, stride = tuple(cams.shape[-2:]), batch.images.shape[-2] // cams.shape[-2]
        cuts = [(y, x) for image in points for _, y, x in image]
        merged = [merge_cuts(piece_cams[4 * n : 4 * n + 4], point, grid, stride)
                  for n, point in enumerate(cuts)]  # fmt: skip
        merged = torch.stack(merged) if merged else cams.new_zeros(0, *cams.shape[1:])
        return {
            "cls": self.classification(out["logits"], batch),
            "pcl": Term(piece_class_loss(merged, points, labels), "mean", weight=r.alpha_p),
            "re": Term(reconstruction_loss(cams, merged, points, labels), "mean",
                       weight=self.reconstruction_weight(ctx.step, ctx.total_steps)),
        }  # fmt: skip

    def after_step(self, module: OASSModule, ctx) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, module, self.cfg.recipe.teacher_decay, step=ctx.step - 1)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict()} if self.teacher is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
