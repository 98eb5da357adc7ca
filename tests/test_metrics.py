"""fastmlic.metrics against scikit-learn and hand-computed examples."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from fastmlic.metrics import average_precision, multilabel_metrics


def test_non_interpolated_ap_equals_sklearn_with_ties_and_ignore_mask(rng):
    scores = rng.integers(0, 6, (300, 7)) / 5  # six distinct values: many ties
    targets = rng.random((300, 7)) < 0.3
    ignore = rng.random((300, 7)) < 0.1
    ap = average_precision(scores, targets, ignore)
    for c in range(7):
        keep = ~ignore[:, c]
        assert ap[c] == pytest.approx(average_precision_score(targets[keep, c], scores[keep, c]), abs=1e-12)


def test_voc2012_interpolated_ap_by_hand():
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    targets = np.array([[0], [1], [1], [0], [1]])
    # precision at each rank 0, 1/2, 2/3, 1/2, 3/5; recall steps of 1/3 at ranks 2, 3 and 5
    assert average_precision(scores, targets)[0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    # the envelope replaces 1/2 at rank 2 by the best later precision, 2/3
    voc = average_precision(scores, targets, flavour="voc2012")[0]
    assert voc == pytest.approx((2 / 3 + 2 / 3 + 3 / 5) / 3)


def test_classes_without_positives_leave_the_mean_and_ignored_cells_count_nowhere():
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.6, 0.3, 0.9]])
    targets = np.array([[1, 0, 1], [0, 0, 0], [0, 0, 1]])
    m = multilabel_metrics(scores, targets)
    assert np.isnan(m["ap"][1]) and m["mAP"] == pytest.approx((1.0 + 1.0) / 2)
    ignore = np.zeros_like(targets, bool)
    ignore[2, 0] = True  # the false positive of class 0 is ignored: precision rises
    m2 = multilabel_metrics(scores, targets, ignore, threshold=0.5)
    assert m["CP"] == pytest.approx((1 / 2 + 0 + 2 / 2) / 3)  # class 0 predicted for images 0 and 2
    assert m2["CP"] == pytest.approx((1 / 1 + 0 + 2 / 2) / 3)


def test_threshold_and_top3_metrics_by_hand():
    scores = np.array([[0.9, 0.6, 0.2, 0.1], [0.4, 0.8, 0.7, 0.3]])
    targets = np.array([[1, 0, 0, 1], [0, 1, 0, 0]])
    m = multilabel_metrics(scores, targets, threshold=0.5)
    # predicted: image 0 -> {0, 1}, image 1 -> {1, 2}; true positives: (0, 0) and (1, 1)
    assert m["OP"] == pytest.approx(2 / 4) and m["OR"] == pytest.approx(2 / 3)
    assert m["OF1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert m["CP"] == pytest.approx((1 + 1 / 2 + 0 + 0) / 4)
    assert m["CR"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    # top 3: image 0 -> {0, 1, 2}, image 1 -> {1, 2, 0}
    assert m["OP@top3"] == pytest.approx(2 / 6) and m["OR@top3"] == pytest.approx(2 / 3)
