"""Exact AUC (Mann-Whitney, ties count 1/2) with NPL = 1 as the positive class."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def check_binary(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return float64 scores and int labels ``(N,)``; both classes must be present."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(
            f"scores {s.shape} and labels {y.shape} differ in length; expected one score per label"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf; expected finite probabilities")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0 (NPC) or 1 (NPL); found values {sorted(set(y.tolist()))[:5]}")
    y = y.astype(np.int64)
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError(
            f"AUC needs both classes; found {int(y.sum())} NPL and {int(len(y) - y.sum())} NPC patients"
        )
    return s, y


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score_NPL > score_NPC) + ½·P(tie). ``scores (N,)``, ``labels (N,)`` in {0, 1}."""
    s, y = check_binary(scores, labels)
    ranks = rankdata(s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
