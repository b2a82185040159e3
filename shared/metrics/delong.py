"""DeLong (1988) variance of the AUC and its normal-approximation confidence interval, as R's pROC computes it.

The placement values are computed with midranks (Sun & Xu 2014), so ties count 1/2, matching
``pROC::ci.auc(method = "delong")`` (interval clipped to [0, 1]).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

from shared.metrics.auc import check_binary


def delong_placements(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(auc, v10, v01)``: v10 ``(n_pos,)`` = share of negatives below each positive (ties ½), v01 ``(n_neg,)``
    = share of positives above each negative."""
    s, y = check_binary(scores, labels)
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    all_ranks = rankdata(np.concatenate([pos, neg]))
    tx = rankdata(pos)
    ty = rankdata(neg)
    v10 = (all_ranks[:m] - tx) / n
    v01 = 1.0 - (all_ranks[m:] - ty) / m
    return float(v10.mean()), v10, v01


def delong_variance(v10: np.ndarray, v01: np.ndarray) -> float:
    """Var(AUC) = S10/m + S01/n with unbiased sample variances of the placement values."""
    m, n = len(v10), len(v01)
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    return s10 / m + s01 / n


def normal_ci(value: float, variance: float, alpha: float = 0.95) -> tuple[float, float]:
    """Two-sided ``alpha`` interval ``value ± z·sqrt(variance)``, clipped to [0, 1]."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r}: expected a confidence level in (0, 1), e.g. 0.95")
    z = float(norm.ppf(1.0 - (1.0 - alpha) / 2.0))
    half = z * float(np.sqrt(max(variance, 0.0)))
    return max(0.0, value - half), min(1.0, value + half)


def delong_ci(scores: np.ndarray, labels: np.ndarray, alpha: float = 0.95) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: AUC with its DeLong ``alpha`` confidence interval (NPL = 1 positive)."""
    value, v10, v01 = delong_placements(scores, labels)
    lo, hi = normal_ci(value, delong_variance(v10, v01), alpha)
    return value, lo, hi


def paired_delong_test(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray
) -> tuple[float, float, float, float]:
    """DeLong test of two correlated AUCs on the same patients: ``(z, p, auc_a, auc_b)``.

    As ``pROC::roc.test(roc_a, roc_b, method = "delong", paired = TRUE)``: z = (AUC_a - AUC_b) / sqrt(L S L')
    with S = S10/m + S01/n the covariance of the two tests' placement values, L = (1, -1); two-sided p. z is NaN
    (p NaN) when both tests' placements are identical (zero variance of the difference).
    """
    auc_a, v10a, v01a = delong_placements(scores_a, labels)
    auc_b, v10b, v01b = delong_placements(scores_b, labels)
    m, n = len(v10a), len(v01a)
    if m < 2 or n < 2:
        raise ValueError(f"the paired DeLong test needs at least 2 NPL and 2 NPC patients; found {m} and {n}")
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    s = s10 / m + s01 / n
    var = float(s[0, 0] + s[1, 1] - 2.0 * s[0, 1])
    if var <= 0:
        return float("nan"), float("nan"), auc_a, auc_b
    z = (auc_a - auc_b) / np.sqrt(var)
    return float(z), float(2.0 * norm.sf(abs(z))), auc_a, auc_b
