"""Metrics (NumPy only): Dice from sums, exact and histogram AUC, DeLong CI, ROC and Youden point."""

from shared.metrics.auc import auc
from shared.metrics.delong import delong_ci
from shared.metrics.dice import dice_from_sums, overlap_sums, patient_dice
from shared.metrics.histogram_auc import (
    auc_from_histograms,
    delong_ci_from_histograms,
    histogram_auc_error_bound,
    roc_from_histograms,
    score_histograms,
)
from shared.metrics.roc import roc_curve_points, youden_from_curve, youden_point

__all__ = [
    "auc",
    "auc_from_histograms",
    "delong_ci",
    "delong_ci_from_histograms",
    "dice_from_sums",
    "histogram_auc_error_bound",
    "overlap_sums",
    "patient_dice",
    "roc_curve_points",
    "roc_from_histograms",
    "score_histograms",
    "youden_from_curve",
    "youden_point",
]
