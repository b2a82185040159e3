"""Dice overlap, per patient and pooled from sufficient statistics (sums), so sites send only three numbers."""

from __future__ import annotations

import numpy as np


def dice_from_sums(intersection: float, pred_sum: float, true_sum: float) -> float:
    """Pooled Dice = 2·Σ|P∩T| / (Σ|P| + Σ|T|); 1.0 when both sums are 0 (nothing to find, nothing found)."""
    denom = float(pred_sum) + float(true_sum)
    if denom <= 0:
        return 1.0
    return 2.0 * float(intersection) / denom


def overlap_sums(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, int]:
    """``(intersection, pred_sum, true_sum)`` voxel counts for two binary arrays of one shape (any dims)."""
    if pred.shape != true.shape:
        raise ValueError(
            f"mask shapes differ: predicted {pred.shape}, reference {true.shape}; expected equal"
        )
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(true, dtype=bool)
    return int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))


def patient_dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of one patient's binary masks ``(Z, H, W)`` (any shape, equal); 1.0 when both are empty."""
    return dice_from_sums(*overlap_sums(pred, true))
