"""Intensity normalisation shared by the segmenter's slices and the classifiers' ROI crops.

Normalisation uses the mean and std of voxels inside the body (above 5 % of the 99th percentile), so a site
that scales its intensities by any factor gives the same network input.
"""

from __future__ import annotations

import numpy as np


def body_mask(volume: np.ndarray) -> np.ndarray:
    """bool mask (``volume``'s shape) of the voxels inside the body: above 5 % of the range from the minimum to
    the 99th percentile."""
    v = np.asarray(volume, dtype=np.float32)
    hi = float(np.percentile(v, 99.0))
    lo = float(v.min())
    return v > lo + 0.05 * (hi - lo)


def body_zscore(volume: np.ndarray) -> np.ndarray:
    """float32 ``(Z, H, W)`` (any shape) z-scored with body statistics; constant input gives zeros."""
    v = np.asarray(volume, dtype=np.float32)
    body = body_mask(v)
    sel = v[body] if body.sum() > 16 else v.ravel()
    mean = float(sel.mean())
    std = float(sel.std())
    if std < 1e-6:
        return np.zeros_like(v)
    return (v - mean) / std
