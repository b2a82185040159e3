"""Reference tissue estimated from the image alone: the level a radiologist compares the tumour's signal with.

MR signal has no absolute unit, and the NPC/NPL evidence is the tumour's signal relative to muscle (domain
reference, section 1 and 5.4). A hospital has no muscle contour, so the reference is estimated from the patient's
own series at the site: no other site's data is needed, which keeps it federated and applicable to real MRI.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from shared.data.normalise import body_mask

#: histogram bin width and smoothing (log-intensity units) of :func:`log_mode`
MODE_BIN = 0.01
MODE_SMOOTH = 0.04


def log_mode(values: np.ndarray) -> float:
    """Most frequent value of log intensities: the dominant tissue's level. The peak of the histogram smoothed by
    :data:`MODE_SMOOTH`, refined to the median of the values within :data:`MODE_SMOOTH` of it (no bin rounding).

    Raises ValueError on an empty input (the caller names the patient and sequence).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise ValueError("log_mode of no voxels")
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < MODE_BIN:
        return float(np.median(v))
    n_bins = int(np.ceil((hi - lo) / MODE_BIN))
    counts, edges = np.histogram(v, bins=n_bins, range=(lo, hi))
    smooth = gaussian_filter1d(counts.astype(np.float64), MODE_SMOOTH / MODE_BIN, mode="constant")
    k = int(np.argmax(smooth))
    peak = (edges[k] + edges[k + 1]) / 2
    return float(np.median(v[np.abs(v - peak) <= MODE_SMOOTH]))


#: the shell around the tumour whose dominant tissue is the reference (mm from the tumour surface): near enough
#: that the bias field is about the tumour's, wide enough that muscle (longus colli, pterygoids) dominates it
SHELL_MM = (3.0, 40.0)


def reference_log_level(
    volume: np.ndarray, tumour: np.ndarray, spacing_mm: tuple[float, float, float]
) -> float:
    """Natural log of the reference tissue's level in ``volume``: the mode of the log intensities of the body
    voxels within :data:`SHELL_MM` of ``tumour`` (3-D distance with ``spacing_mm`` ``(z, y, x)``).

    Raises ValueError (the caller names the patient) on an empty ``tumour`` mask or a shell without body voxels;
    there is no fallback estimate.
    """
    from scipy.ndimage import distance_transform_edt

    inside = np.asarray(tumour) > 0
    if not inside.any():
        raise ValueError("reference tissue: the tumour mask is empty")
    dist = distance_transform_edt(~inside, sampling=spacing_mm)
    v = np.asarray(volume, dtype=np.float32)
    shell = (dist > SHELL_MM[0]) & (dist <= SHELL_MM[1]) & body_mask(v) & (v > 0)
    if not shell.any():
        raise ValueError(f"reference tissue: no body voxel within {SHELL_MM[1]:g} mm of the tumour")
    return log_mode(np.log(v[shell]))


#: ``roi-intensity = "log-reference"``: log-ratios are clipped to +-this (a tenth to ten times the reference), so
#: that a pixel with almost no signal (air, cortical bone, a partial-volume edge) cannot dominate a crop
LOG_RATIO_CLIP = float(np.log(10.0))


def log_ratio_to_reference(volume: np.ndarray, reference_log: float) -> np.ndarray:
    """float32 ``log(volume / exp(reference_log))`` clipped to +-:data:`LOG_RATIO_CLIP`: 0 is the reference
    tissue, as with :func:`ratio_to_reference`, but a fixed change of signal moves every pixel by the same amount
    whatever its level. A nuisance that scales T1WI down and T2WI up by one factor then cancels in the sum of the two
    channels, which is how the seed's T1WI+T2WI model can beat either alone (the log-ratio is what the hand-feature
    regression of ``simulations.feature_ceiling`` reads)."""
    v = np.maximum(np.asarray(volume, dtype=np.float32), np.float32(1e-6))
    out = np.log(v) - np.float32(reference_log)
    return np.clip(out, -LOG_RATIO_CLIP, LOG_RATIO_CLIP).astype(np.float32)


def ratio_to_reference(volume: np.ndarray, reference_log: float) -> np.ndarray:
    """float32 ``volume / exp(reference_log) - 1``: 0 is the reference tissue, 1 twice its signal, -1 no signal.
    Independent of the scanner's intensity scale. Linear, not log: log-ratio crops stretch dark air and bone to
    large negative values, and the classifier learned less from them (README, recipe figures)."""
    v = np.asarray(volume, dtype=np.float32)
    return (v / np.float32(np.exp(reference_log)) - np.float32(1.0)).astype(np.float32)
