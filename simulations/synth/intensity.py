"""Tissue signal relative to muscle (domain reference, section 5.4) and the tumour's class-dependent signal.

Columns: t1, t2 (no fat sat), t2fs, t1ce_fs, t1ce (no fat sat). Deviation from the table in section 5.4: the
tumour on T2-FS keeps the T2 value (not x1.1), so that fat suppression, a site trait, does not shift the
tumour/muscle ratio that carries the class evidence.
"""

from __future__ import annotations

import math

import numpy as np

from simulations.synth import anatomy as A
from simulations.synth.latents import Latents
from simulations.synth.tumour import TextureField, TumourParams

COLUMNS = ("t1", "t2", "t2fs", "t1ce_fs", "t1ce")
TISSUE_RATIO: dict[str, tuple[float, float, float, float, float]] = {
    "air": (0.03, 0.03, 0.03, 0.03, 0.03),
    "muscle": (1.0, 1.0, 1.0, 1.15, 1.15),
    "fat": (2.8, 2.3, 0.35, 0.40, 2.9),
    "mucosa": (1.15, 2.8, 3.0, 2.4, 2.4),
    "parotid": (1.8, 1.9, 1.3, 1.5, 2.2),
    "fluid": (0.45, 4.5, 4.8, 0.5, 0.5),
    "ica": (0.15, 0.15, 0.15, 0.3, 0.3),
    "ijv": (0.6, 0.8, 0.9, 2.5, 2.5),
    "node": (1.1, 2.2, 2.4, 1.8, 1.8),
    "tumour": (1.10, 2.10, 2.10, 2.10, 2.10),
    "necrosis": (0.7, 3.8, 4.0, 0.9, 0.9),
}
#: per-patient spread of the tumour log-ratio (sigma_seq) and texture scale s_seq
TUMOUR_SIGMA = {"t1": 0.08, "t2": 0.15, "t1ce": 0.15}
TEXTURE_SCALE = {"t1": 0.5, "t2": 1.0, "t1ce": 1.3}


def column(sequence: str, t2_fat_sat: bool, t1ce_fat_sat: bool) -> int:
    if sequence == "t1":
        return 0
    if sequence == "t2":
        return 2 if t2_fat_sat else 1
    if sequence == "t1ce":
        return 3 if t1ce_fat_sat else 4
    raise ValueError(f"unknown sequence {sequence!r}; expected t1, t2 or t1ce")


def ratio_lut(col: int) -> np.ndarray:
    """float32 (N_STRUCTURES,) log-ratio to muscle of each structure id for one column."""
    lut = np.zeros(A.N_STRUCTURES, dtype=np.float32)
    for sid, tissue in A.STRUCTURE_TISSUE.items():
        lut[sid] = math.log(TISSUE_RATIO[tissue][col])
    return lut


def log_signal(
    sequence: str,
    col: int,
    struct: np.ndarray,
    depth: np.ndarray,
    points: np.ndarray,
    lat: Latents,
    tp: TumourParams,
    texture: TextureField,
) -> np.ndarray:
    """Log signal relative to muscle at each point, before site effects.

    Tumour voxels get ``ln(mean) + sigma * (z_rest + w(depth) * z_class) + sigma_tex * s_seq * GRF`` with the
    centre weight ``w = 0.3 + 0.7 * min(1, depth / 4 mm)``. Returns float32 with ``struct``'s shape.
    """
    out = ratio_lut(col)[struct]
    tum = struct == A.TUMOUR
    if tum.any():
        z_total, z_class = lat.z(sequence)
        sigma = TUMOUR_SIGMA[sequence]
        w = 0.3 + 0.7 * np.minimum(1.0, depth[tum] / 4.0)
        grf = texture(points[tum])
        out[tum] += (
            sigma * ((z_total - z_class) + w * z_class) + tp.texture_sigma * TEXTURE_SCALE[sequence] * grf
        )
    return out
