"""`oass`: object-aware self-supervision on a Puzzle-CAM base (Xu et al., "Object-Aware
Self-Supervised Multi-Label Learning", ICIP 2022). The paper's repository holds only a README; its
base, Puzzle-CAM (Jo & Yu, ICIP 2021; shjo-april/PuzzleCAM, `core/puzzle_utils.py` read for this file),
is public.

This file holds, so far, the method's pure functions:
- `tile(x, pieces)` / `merge(tiles, pieces)`: Puzzle-CAM's `tile_features` / `merge_features` (a
  square grid of pieces, piece-major along the batch: all images' first piece, then all images'
  second...), as one reshape each instead of Python loops, and exact inverses of each other. Puzzle-CAM
  silently drops the remainder rows when the side does not divide; here that is an error.
- `keypoints(cams, strategy, k)`: the paper's four key-point strategies on class activation maps
  [B, C, H, W], in feature-grid coordinates (row, column) as floats. The paper describes them in one
  sentence each; where it is silent, these choices are ours:
  * `max`: the peak of the class-merged CAM (the maximum over the channels given): [B, 1, 2];
  * `cmax`: the peak of each channel: [B, C, 2];
  * `ctopk`: the geometric centre of the k highest local maxima of each channel: [B, C, 2]. A local
    maximum is a cell not below any of its 8 neighbours (3x3 max pooling), so every cell of a plateau
    counts; with fewer than k local maxima, all of them are used;
  * `ctopk_w`: the same centre weighted by the CAM values at those maxima, each channel min-max
    normalised to [0, 1] first.
  Ties (equal peaks) go to the first cell in row-major order. A channel without variation (all
  cells equal, e.g. a class the model has not learnt yet) has no peak: its key point is the grid's
  centre, for every strategy.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Strategy = Literal["max", "cmax", "ctopk", "ctopk_w"]
STRATEGIES = ("max", "cmax", "ctopk", "ctopk_w")


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
