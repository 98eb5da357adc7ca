"""Multi-label metrics as the field reports them, on fractions in [0, 1].

- AP, non-interpolated (ASL, ML-GCN, MulCon, CPSD): the mean of precision at each positive, here in
  scikit-learn's form sum_k (R_k - R_{k-1}) P_k over distinct scores, so tied scores count as one
  threshold instead of depending on sort order (identical when there are no ties).
- AP, VOC2012-interpolated (Query2Label, SSGRL, CoCo, SGRE): the same sum with each P_k replaced by
  the best precision at any recall >= R_k (the precision envelope).
- Cells marked ignore (VOC difficult-only) are left out of every metric. Classes without a positive
  among the evaluated images have no AP and are left out of the mean (ASL counts them as 0).
- CP, CR, CF1, OP, OR, OF1 as ML-GCN defines them, with predictions = score >= threshold, and for
  the top-3 scores of each image. A class that is never predicted has precision 0.
"""

from __future__ import annotations

import numpy as np

FLAVOURS = ("non_interpolated", "voc2012")


def _class_ap(scores: np.ndarray, positive: np.ndarray, flavour: str) -> float:
    num_pos = int(positive.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    tp = np.cumsum(positive)
    # the last position of each run of equal scores is one threshold
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = tp[last]
    precision = tp / (last + 1)
    recall = tp / num_pos
    if flavour == "voc2012":
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(
    scores: np.ndarray,
    targets: np.ndarray,
    ignore: np.ndarray | None = None,
    flavour: str = "non_interpolated",
) -> np.ndarray:
    """Per-class AP [C] (NaN for a class without positives) of scores [N, C] against 0/1 targets."""
    if flavour not in FLAVOURS:
        raise ValueError(f"AP flavour {flavour!r}; expected one of {FLAVOURS}")
    scores, positive = np.asarray(scores, np.float64), np.asarray(targets) > 0.5
    keep = np.ones_like(positive) if ignore is None else ~np.asarray(ignore, bool)
    return np.array([_class_ap(scores[keep[:, c], c], positive[keep[:, c], c], flavour)
                     for c in range(scores.shape[1])])  # fmt: skip


def _prf(predicted: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    tp_c = (predicted & positive).sum(0)
    pred_c, pos_c = predicted.sum(0), positive.sum(0)
    cp = float(np.mean(tp_c / np.maximum(pred_c, 1)))
    cr = float(np.mean(tp_c / np.maximum(pos_c, 1)))
    op = float(tp_c.sum() / max(pred_c.sum(), 1))
    orec = float(tp_c.sum() / max(pos_c.sum(), 1))

    def f1(p, r):
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orec, "OF1": f1(op, orec)}


def multilabel_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    ignore: np.ndarray | None = None,
    threshold: float = 0.5,
    headline: str = "non_interpolated",
) -> dict:
    """Every metric for probabilities `scores` [N, C]: `mAP` is the headline flavour; per-class APs
    under `ap`; `@top3` keys use each image's three best scores as its predictions."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(targets) > 0.5
    keep = np.ones_like(positive) if ignore is None else ~np.asarray(ignore, bool)
    out: dict = {}
    for flavour in FLAVOURS:
        ap = average_precision(scores, positive, None if ignore is None else ~keep, flavour)
        out[f"mAP_{flavour}"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
        if flavour == headline:
            out["ap"] = ap.tolist()
    out["mAP"] = out[f"mAP_{headline}"]
    out.update(_prf((scores >= threshold) & keep, positive & keep))
    k = min(3, scores.shape[1])
    top = np.zeros_like(positive)
    np.put_along_axis(top, np.argsort(-scores, axis=1, kind="stable")[:, :k], True, axis=1)
    out.update({f"{name}@top3": v for name, v in _prf(top & keep, positive & keep).items()})
    return out
