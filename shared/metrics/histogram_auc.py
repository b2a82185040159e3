"""AUC, DeLong CI and ROC from per-class score histograms: what sites send instead of patient scores.

Scores (probabilities of NPL in [0, 1]) are binned into ``B`` equal bins. Pairs in different bins keep their
order, so they count exactly as in the exact AUC; a positive and a negative in the same bin count ½ here
(a tie) instead of 1, ½ or 0. Hence the **binning error bound**: with B bins,

    |AUC_hist − AUC_exact| ≤ ½ · (number of positive-negative pairs in the same bin) / (n_pos · n_neg)

which is computable from the histograms themselves (:func:`histogram_auc_error_bound`) and shrinks to 0 as
B grows (with 1000 bins and well-spread scores it is typically below 1e-3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.metrics.delong import delong_variance, normal_ci


def score_histograms(scores: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[list[int], list[int]]:
    """``(hist_pos, hist_neg)``: counts of NPL (1) and NPC (0) scores in ``n_bins`` equal bins over [0, 1].

    Scores outside [0, 1] are clipped; bin i holds ``[i/B, (i+1)/B)``, the last bin includes 1.0.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins={n_bins}: expected at least 2")
    s = np.clip(np.asarray(scores, dtype=np.float64).ravel(), 0.0, 1.0)
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    idx = np.minimum((s * n_bins).astype(np.int64), n_bins - 1)
    hist_pos = np.bincount(idx[y == 1], minlength=n_bins)
    hist_neg = np.bincount(idx[y == 0], minlength=n_bins)
    return hist_pos.astype(int).tolist(), hist_neg.astype(int).tolist()


def _as_counts(hist_pos: Sequence[int], hist_neg: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(hist_pos, dtype=np.float64)
    n = np.asarray(hist_neg, dtype=np.float64)
    if p.shape != n.shape or p.ndim != 1:
        raise ValueError(
            f"histograms differ in shape: positive {p.shape}, negative {n.shape}; expected equal 1-D"
        )
    if (p < 0).any() or (n < 0).any():
        raise ValueError("histograms contain negative counts")
    if p.sum() == 0 or n.sum() == 0:
        raise ValueError(f"AUC needs both classes; found {int(p.sum())} NPL and {int(n.sum())} NPC patients")
    return p, n


def _placements(p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin placement values: v10[i] for a positive in bin i, v01[j] for a negative in bin j."""
    neg_below = np.cumsum(n) - n
    pos_above = p.sum() - np.cumsum(p)
    v10 = (neg_below + 0.5 * n) / n.sum()
    v01 = (pos_above + 0.5 * p) / p.sum()
    return v10, v01


def auc_from_histograms(hist_pos: Sequence[int], hist_neg: Sequence[int]) -> float:
    """AUC with pairs in the same bin counted ½ (see the module docstring for the error bound)."""
    p, n = _as_counts(hist_pos, hist_neg)
    v10, _ = _placements(p, n)
    return float((p * v10).sum() / p.sum())


def histogram_auc_error_bound(hist_pos: Sequence[int], hist_neg: Sequence[int]) -> float:
    """½ · (positive-negative pairs sharing a bin) / (n_pos · n_neg): the largest possible |AUC_hist − AUC_exact|."""
    p, n = _as_counts(hist_pos, hist_neg)
    return float(0.5 * (p * n).sum() / (p.sum() * n.sum()))


def delong_ci_from_histograms(
    hist_pos: Sequence[int], hist_neg: Sequence[int], alpha: float = 0.95
) -> tuple[float, float, float]:
    """``(auc, lo, hi)`` DeLong interval treating each bin as one tied score value (exact for binned scores)."""
    p, n = _as_counts(hist_pos, hist_neg)
    v10, v01 = _placements(p, n)
    m, k = p.sum(), n.sum()
    value = float((p * v10).sum() / m)
    mean01 = float((n * v01).sum() / k)
    s10 = float((p * (v10 - value) ** 2).sum() / (m - 1)) if m > 1 else 0.0
    s01 = float((n * (v01 - mean01) ** 2).sum() / (k - 1)) if k > 1 else 0.0
    lo, hi = normal_ci(value, s10 / m + s01 / k, alpha)
    return value, lo, hi


def roc_from_histograms(
    hist_pos: Sequence[int], hist_neg: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` with one point per bin edge, from (0, 0) to (1, 1); NPL when score >= threshold."""
    p, n = _as_counts(hist_pos, hist_neg)
    b = len(p)
    tps = np.r_[0.0, np.cumsum(p[::-1])]
    fps = np.r_[0.0, np.cumsum(n[::-1])]
    thresholds = np.r_[np.inf, (np.arange(b)[::-1]) / b]
    return fps / n.sum(), tps / p.sum(), thresholds


__all__ = [
    "auc_from_histograms",
    "delong_ci_from_histograms",
    "delong_variance",
    "histogram_auc_error_bound",
    "roc_from_histograms",
    "score_histograms",
]
