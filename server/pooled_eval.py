"""Pooled evaluation from the sites' sufficient statistics (no patient-level value ever reaches the server).

Dice: summed intersections and sizes over sites, then one Dice (exactly what pooling the voxels would give).
AUC / ROC / DeLong 95% CI: element-wise sums of the per-class patient-score histograms, then
``shared.metrics`` (error vs. pooled raw scores bounded by ``histogram_auc_error_bound``).
Per-site figures are computed the same way from each site's own statistics. Pure numpy: no Flower here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from shared import protocol as P
from shared.metrics import (
    auc_from_histograms,
    delong_ci_from_histograms,
    dice_from_sums,
    histogram_auc_error_bound,
    roc_from_histograms,
)

NAN = float("nan")
SiteSums = Mapping[str, Mapping[str, object]]


def _weighted_loss(stats: Iterable[Mapping[str, object]]) -> float:
    num = den = 0.0
    for s in stats:
        n = float(s.get(P.NUM_EXAMPLES, 0) or 0)
        num += n * float(s.get(P.EVAL_LOSS, 0.0) or 0.0)
        den += n
    return num / den if den > 0 else NAN


def seg_figures(stats: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """Dice (NaN when no tumour voxels at all), loss, counts from one or several sites' seg statistics."""
    stats = list(stats)
    inter = sum(float(s[P.DICE_INTERSECTION]) for s in stats)
    pred = sum(float(s[P.DICE_PRED_SUM]) for s in stats)
    true = sum(float(s[P.DICE_TRUE_SUM]) for s in stats)
    patients = sum(int(s[P.NUM_PATIENTS]) for s in stats)
    dice = dice_from_sums(inter, pred, true) if (pred + true) > 0 and patients > 0 else NAN
    return {"dice": float(dice), "loss": _weighted_loss(stats), "num-patients": float(patients)}


def summed_histograms(stats: Iterable[Mapping[str, object]]) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise sum of ``hist-pos`` / ``hist-neg`` over sites -> two int64 arrays of equal length."""
    pos: np.ndarray | None = None
    neg: np.ndarray | None = None
    for s in stats:
        p = np.asarray(s[P.HIST_POS], dtype=np.int64)
        n = np.asarray(s[P.HIST_NEG], dtype=np.int64)
        if p.shape != n.shape or (pos is not None and p.shape != pos.shape):
            raise ValueError(
                f"histograms of different lengths: {p.shape} / {n.shape}; all sites must use hist-bins"
            )
        pos = p if pos is None else pos + p
        neg = n if neg is None else neg + n
    if pos is None or neg is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return pos, neg


def cls_figures(stats: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """AUC with DeLong 95% CI from summed histograms; NaN when a class is absent."""
    stats = list(stats)
    pos, neg = summed_histograms(stats)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    out = {"num-pos": float(n_pos), "num-neg": float(n_neg), "loss": _weighted_loss(stats)}
    if n_pos == 0 or n_neg == 0:
        out.update({"auc": NAN, "auc-lo": NAN, "auc-hi": NAN, "auc-binning-bound": NAN})
        return out
    value, lo, hi = delong_ci_from_histograms(pos.tolist(), neg.tolist())
    out.update(
        {
            "auc": float(auc_from_histograms(pos.tolist(), neg.tolist())),
            "auc-lo": float(max(0.0, lo)),
            "auc-hi": float(min(1.0, hi)),
            "auc-binning-bound": float(histogram_auc_error_bound(pos.tolist(), neg.tolist())),
        }
    )
    return out


def cls_roc(stats: Iterable[Mapping[str, object]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of the pooled histograms, or None when a class is absent."""
    pos, neg = summed_histograms(stats)
    if pos.sum() == 0 or neg.sum() == 0:
        return None
    fpr, tpr, _ = roc_from_histograms(pos.tolist(), neg.tolist())
    return fpr, tpr


def pool(
    figures: Callable[[list[Mapping[str, object]]], dict[str, float]],
    sums: SiteSums,
    pooled_sites: Iterable[str] | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(``figures`` of the sites in ``pooled_sites`` (all when None) pooled, ``figures`` of each site alone).

    ``figures`` is :func:`seg_figures` or :func:`cls_figures` (a stage knows which: ``server.stage.Stage``).
    Sites are summed in name order, never in reply arrival order.
    """
    chosen = set(sums) if pooled_sites is None else set(pooled_sites) & set(sums)
    pooled = figures([sums[s] for s in sorted(chosen)]) if chosen else {}
    per_site = {site: figures([sums[site]]) for site in sorted(sums)}
    return pooled, per_site


def finite_or_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
