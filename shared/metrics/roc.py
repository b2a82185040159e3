"""ROC curve points and the Youden operating point (sensitivity / specificity reported beside each AUC)."""

from __future__ import annotations

import numpy as np

from shared.metrics.auc import check_binary


def roc_curve_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, each ``(K,)`` float64, from (0, 0) at threshold +inf to (1, 1).

    A patient is called NPL when ``score >= threshold``.
    """
    s, y = check_binary(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (len(y) - y.sum())]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def youden_from_curve(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float, float]:
    """``(threshold, sensitivity, specificity)`` maximising sensitivity + specificity − 1 (first maximum) among
    the curve's finite thresholds: the (0, 0) end, "call nobody NPL" at threshold +inf, is not an operating point
    a bundle can use (an uninformative model ties it with every other point)."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if not np.isfinite(thr).any():
        raise ValueError("the ROC curve has no finite threshold: both classes are needed")
    j = np.where(np.isfinite(thr), np.asarray(tpr) - np.asarray(fpr), -np.inf)
    i = int(np.argmax(j))
    return float(thresholds[i]), float(tpr[i]), float(1.0 - fpr[i])


def youden_point(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """``(threshold, sensitivity, specificity)`` at the Youden-optimal cut (NPL when score >= threshold)."""
    return youden_from_curve(*roc_curve_points(scores, labels))
