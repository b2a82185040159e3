"""Pooled evaluation from the sites' sufficient statistics (no patient-level value ever reaches the server).

Dice: summed intersections and sizes over sites, then one Dice (exactly what pooling the voxels would give).
AUC / ROC / DeLong 95% CI: from the sites' per-class patient-score histograms, whose bins may differ between sites
(each site caps and merges its bins: ``shared.metrics.coarse_histograms.pooled_auc``); the error vs. pooled raw
scores is bounded by ``auc-binning-bound``, computed from the histograms.
Per-site figures are computed the same way from each site's own statistics. Pure numpy: no Flower here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from shared import protocol as P
from shared.metrics import dice_from_sums, youden_from_curve
from shared.metrics.coarse_histograms import Site, pooled_auc, pooled_roc

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


def site_histograms_of(stats: Iterable[Mapping[str, object]]) -> list[Site]:
    """``(hist-pos, hist-neg, hist-span)`` of each site's statistics (span None from a reply without it)."""
    return [(s[P.HIST_POS], s[P.HIST_NEG], s.get(P.HIST_SPAN)) for s in stats]  # type: ignore[misc]


def class_totals(stats: Iterable[Mapping[str, object]]) -> tuple[int, int]:
    """(NPL patients, NPC patients) over the sites' histograms."""
    stats = list(stats)
    return (
        int(sum(sum(s[P.HIST_POS]) for s in stats)),  # type: ignore[arg-type]
        int(sum(sum(s[P.HIST_NEG]) for s in stats)),  # type: ignore[arg-type]
    )


def cls_figures(stats: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """AUC with DeLong 95% CI from the sites' histograms (their bins may differ: ``pooled_auc``); NaN when a
    class is absent. ``auc-binning-bound``: the largest possible distance to the AUC of the raw scores."""
    stats = list(stats)
    n_pos, n_neg = class_totals(stats)
    out = {"num-pos": float(n_pos), "num-neg": float(n_neg), "loss": _weighted_loss(stats)}
    if n_pos == 0 or n_neg == 0:
        out.update({"auc": NAN, "auc-lo": NAN, "auc-hi": NAN, "auc-binning-bound": NAN})
        return out
    value, lo, hi, bound = pooled_auc(site_histograms_of(stats))
    out.update(
        {
            "auc": value,
            "auc-lo": float(max(0.0, lo)),
            "auc-hi": float(min(1.0, hi)),
            "auc-binning-bound": bound,
        }
    )
    return out


def cls_roc(stats: Iterable[Mapping[str, object]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of the pooled histograms (each score range at its midpoint), or None when a class is absent."""
    stats = list(stats)
    n_pos, n_neg = class_totals(stats)
    if n_pos == 0 or n_neg == 0:
        return None
    fpr, tpr, _ = pooled_roc(site_histograms_of(stats))
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


def auc_entry(stats: list[Mapping[str, object]]) -> dict[str, Any]:
    """A results.json AUC entry (value, 95% CI, counts, Youden operating point) from sites' histograms."""
    n_pos, n_neg = class_totals(stats)
    if n_pos == 0 or n_neg == 0:
        n = n_pos + n_neg
        return {
            "value": None,
            "ci": [None, None],
            "n_patients": n,
            "n_npl": n_pos,
            "n_npc": n_neg,
            "source": "histogram",
            "note": "one class absent: AUC undefined" if n else "no patient (sequence missing or no ROI)",
        }
    hists = site_histograms_of(stats)
    value, lo, hi, _ = pooled_auc(hists)
    thr, sens, spec = youden_from_curve(*pooled_roc(hists))
    return {
        "value": value,
        "ci": [lo, hi],
        "n_patients": n_pos + n_neg,
        "n_npl": n_pos,
        "n_npc": n_neg,
        "sensitivity": sens,
        "specificity": spec,
        "threshold": thr,
        "source": "histogram",
    }
