"""Metrics against hand-computed values, scikit-learn and R's pROC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from shared.metrics import (
    auc,
    auc_from_histograms,
    delong_ci,
    delong_ci_from_histograms,
    dice_from_sums,
    histogram_auc_error_bound,
    patient_dice,
    roc_curve_points,
    roc_from_histograms,
    score_histograms,
    youden_point,
)
from shared.metrics.delong import delong_placements, delong_variance

# Fixed data set checked against R 4.x, pROC 1.18.0, with exactly this command:
# Rscript -e 'suppressMessages(library(pROC)); labels <- c(1,1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0);
#   scores <- c(0.91,0.80,0.62,0.55,0.40,0.33,0.30,0.12,0.70,0.55,0.52,0.40,0.30,0.28,0.20,0.15,0.10,0.05,0.62,0.45);
#   r <- roc(labels, scores, levels=c(0,1), direction="<", quiet=TRUE);
#   print(sprintf("%.12f", as.numeric(ci.auc(r, method="delong", conf.level=0.95))));
#   print(sprintf("%.12f", var(r, method="delong")))'
# Output: "0.410861848051" "0.666666666667" "0.922471485283" and "0.017034181097"
PROC_LABELS = [1] * 8 + [0] * 12
PROC_SCORES = [0.91, 0.80, 0.62, 0.55, 0.40, 0.33, 0.30, 0.12, 0.70, 0.55, 0.52, 0.40, 0.30, 0.28, 0.20, 0.15, 0.10,
               0.05, 0.62, 0.45]  # fmt: skip
PROC_CI = (0.666666666667, 0.410861848051, 0.922471485283)
PROC_VAR = 0.017034181097


def test_dice_hand_computed() -> None:
    pred = np.zeros((2, 4, 4), np.uint8)
    true = np.zeros((2, 4, 4), np.uint8)
    pred[0, :2, :2] = 1  # 4 voxels
    true[0, :2, :3] = 1  # 6 voxels, overlap 4
    assert patient_dice(pred, true) == pytest.approx(2 * 4 / 10)
    assert dice_from_sums(4, 4, 6) == pytest.approx(0.8)
    assert dice_from_sums(0, 0, 0) == 1.0
    assert patient_dice(pred, np.zeros_like(true)) == 0.0
    # pooled Dice is not the mean of per-patient Dice: sums of 2 patients
    assert dice_from_sums(4 + 1, 4 + 1, 6 + 9) == pytest.approx(10 / 20)


def test_auc_hand_and_sklearn() -> None:
    # 2 positives (0.9, 0.4), 2 negatives (0.4, 0.1): pairs 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4
    assert auc([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) * 0.7 + 0.25 * y, 2)  # many ties
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auc([0.1, 0.2], [1, 1])


def test_delong_matches_proc() -> None:
    value, lo, hi = delong_ci(PROC_SCORES, PROC_LABELS)
    assert (value, lo, hi) == pytest.approx(PROC_CI, abs=1e-9)
    _, v10, v01 = delong_placements(PROC_SCORES, PROC_LABELS)
    assert delong_variance(v10, v01) == pytest.approx(PROC_VAR, abs=1e-11)


def test_histogram_auc_within_bound_of_exact() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, 300) + 1.2 * y)))
    exact = auc(s, y)
    for bins in (4, 10, 100, 1000):
        hp, hn = score_histograms(s, y, bins)
        assert sum(hp) == int(y.sum()) and sum(hn) == int((1 - y).sum())
        bound = histogram_auc_error_bound(hp, hn)
        assert abs(auc_from_histograms(hp, hn) - exact) <= bound + 1e-12
    hp4, hn4 = score_histograms(s, y, 4)
    assert histogram_auc_error_bound(hp4, hn4) > 0.05  # coarse bins: a real error budget
    assert abs(auc_from_histograms(hp4, hn4) - exact) > 1e-4  # and a real difference
    # When scores are already bin centres the histogram DeLong equals the exact DeLong (ties treated alike).
    centres = (np.floor(s * 20) + 0.5) / 20
    hp, hn = score_histograms(centres, y, 20)
    assert delong_ci_from_histograms(hp, hn) == pytest.approx(delong_ci(centres, y), abs=1e-12)


def test_youden_never_picks_the_infinite_threshold() -> None:
    """An uninformative model ties every point with (0, 0) at +inf: a bundle needs a usable, finite threshold."""
    thr, sens, spec = youden_point([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert thr == 0.5 and (sens, spec) == (1.0, 0.0)


def test_roc_points_and_youden() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)
    fpr, tpr, _ = roc_curve_points(s, y)
    fpr_sk, tpr_sk, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)
    # perfectly separated at 0.5: sensitivity = specificity = 1 at threshold 0.6 (lowest positive score)
    thr, sens, spec = youden_point([0.9, 0.6, 0.4, 0.2], [1, 1, 0, 0])
    assert (thr, sens, spec) == (0.6, 1.0, 1.0)
    hp, hn = score_histograms([0.9, 0.6, 0.4, 0.2], [1, 1, 0, 0], 10)
    fpr_h, tpr_h, _ = roc_from_histograms(hp, hn)
    assert fpr_h[0] == 0 and tpr_h[-1] == 1 and fpr_h[-1] == 1
