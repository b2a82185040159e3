"""The results.json schema shared by the centralized and the federated runs.

Schema (keys always present)::

    {"dice": float | null, "dice_n_patients": int,
     "auc": {"t1": {"value", "ci": [lo, hi], "n_patients", "n_npl", "n_npc", "sensitivity", "specificity",
                    "threshold", "source": "exact" | "histogram"}, ...},
     "settings": {flat pipeline settings}, "weights_origin": str, "classifier_arch": str,
     "wall_seconds": float, "mode": "centralized" | "federated", "extra": {...}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.metrics.delong import delong_ci
from shared.metrics.histogram_auc import delong_ci_from_histograms, roc_from_histograms
from shared.metrics.roc import youden_from_curve, youden_point

#: Seed study (Tang et al. 2025) test-set figures, for the comparison table.
SEED_DICE = 0.876
SEED_AUC: dict[str, float] = {"t1": 0.78, "t2": 0.75, "t1ce": 0.84, "t1+t2": 0.93}
SEED_CLINICIANS: dict[str, float] = {"junior": 0.77, "senior": 0.84}


def auc_entry(scores: np.ndarray, labels: np.ndarray, alpha: float = 0.95) -> dict[str, Any]:
    """Exact AUC with DeLong CI and Youden sensitivity/specificity from patient scores ``(N,)``."""
    value, lo, hi = delong_ci(scores, labels, alpha)
    thr, sens, spec = youden_point(scores, labels)
    y = np.asarray(labels)
    return {
        "value": value,
        "ci": [lo, hi],
        "n_patients": int(len(y)),
        "n_npl": int((y == 1).sum()),
        "n_npc": int((y == 0).sum()),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": thr,
        "source": "exact",
    }


def auc_entry_from_histograms(
    hist_pos: Sequence[int], hist_neg: Sequence[int], alpha: float = 0.95
) -> dict[str, Any]:
    """Same entry from pooled per-class score histograms (federated evaluation)."""
    value, lo, hi = delong_ci_from_histograms(hist_pos, hist_neg, alpha)
    thr, sens, spec = youden_from_curve(*roc_from_histograms(hist_pos, hist_neg))
    return {
        "value": value,
        "ci": [lo, hi],
        "n_patients": int(sum(hist_pos) + sum(hist_neg)),
        "n_npl": int(sum(hist_pos)),
        "n_npc": int(sum(hist_neg)),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": thr,
        "source": "histogram",
    }


def results_json(
    dice: float | None,
    auc: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    weights_origin: str,
    classifier_arch: str,
    wall_seconds: float,
    mode: str = "centralized",
    dice_n_patients: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the results dict (JSON-safe: NaN/inf become null)."""
    return _json_safe(
        {
            "dice": dice,
            "dice_n_patients": dice_n_patients,
            "auc": {k: dict(v) for k, v in auc.items()},
            "settings": dict(settings),
            "weights_origin": weights_origin,
            "classifier_arch": classifier_arch,
            "wall_seconds": float(wall_seconds),
            "mode": mode,
            "extra": dict(extra or {}),
        }
    )


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(results), indent=2, sort_keys=False) + "\n")
    return path


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
