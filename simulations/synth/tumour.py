"""Primary tumour (GTVnx), optional nodes (GTVnd) and texture, driven by the latent scores (section 5.3).

Every morphology parameter is a noisy read-out of the morphology score ``m`` (``latents.cue_score``), so class
distributions overlap and each single cue is weaker than the combined evidence. Shapes are star-shaped
radial-Fourier blobs around a seed, intersected with the structures the tumour may occupy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from simulations.synth import anatomy as A
from simulations.synth.latents import Latents, cue_score, flag

#: (p NPC, p NPL) of each invasion / extension flag (section 5.3 table).
FLAG_RATES: dict[str, tuple[float, float]] = {
    "pps_invasion": (0.70, 0.25),
    "prevertebral_invasion": (0.45, 0.10),
    "pterygoid_invasion": (0.25, 0.05),
    "clivus_invasion": (0.40, 0.05),
    "tonsil_extension": (0.10, 0.45),
    "nasal_extension": (0.15, 0.25),
    "necrosis": (0.25, 0.05),
    "exophytic": (0.15, 0.45),
}
ALWAYS_ALLOWED = (A.MUCOSA, A.PHARYNX_WALL, A.ADENOID)
FLAG_STRUCTURES: dict[str, tuple[int, ...]] = {
    "pps_invasion": (A.PPS_FAT, A.VELI),
    "prevertebral_invasion": (A.LONGUS,),
    "pterygoid_invasion": (A.MED_PTERYGOID, A.LAT_PTERYGOID),
    "clivus_invasion": (A.CLIVUS_MARROW, A.CLIVUS_CORTEX),
    "exophytic": (A.AIRWAY,),
}


@dataclass(frozen=True)
class TumourParams:
    """Tumour phenotype of one patient (all mm). Written to ``_truth/cohort.json``."""

    side: int
    laterality: float
    diameter_mm: float
    z_centre_mm: float
    z_half_mm: float
    seed_xy_mm: tuple[float, float]
    roughness: float
    fourier: tuple[tuple[int, float, float], ...]
    texture_sigma: float
    texture_corr_mm: float
    flags: dict[str, bool]
    necrosis_blobs: tuple[tuple[float, float, float, float], ...]
    nodes: tuple[tuple[float, float, float, float], ...]

    def as_dict(self) -> dict:
        return asdict(self)


def draw_tumour(rng: np.random.Generator, lat: Latents) -> TumourParams:
    """Map the morphology score ``lat.m`` (positive = NPL-like) onto the tumour parameters."""
    side = 1 if rng.random() < 0.5 else -1
    laterality = float(np.clip(1.0 / (1.0 + math.exp(1.5 * cue_score(rng, lat.m, 0.7))), 0.02, 0.98))
    diameter = float(np.clip(40.0 * math.exp(0.22 * cue_score(rng, lat.m, 0.6)), 18.0, 75.0))
    roughness = float(np.clip(0.13 * math.exp(-0.55 * cue_score(rng, lat.m, 0.6)), 0.02, 0.3))
    tex_score = cue_score(rng, lat.m, 0.6)
    texture_sigma = float(np.clip(0.09 * math.exp(-0.45 * tex_score), 0.02, 0.25))
    texture_corr = float(2.5 + 2.5 / (1.0 + math.exp(-tex_score)))
    flags = {name: flag(rng, cue_score(rng, lat.m, 0.6), *rates) for name, rates in FLAG_RATES.items()}
    weights = rng.dirichlet(np.ones(6))
    fourier = tuple(
        (int(k), float(roughness * w), float(rng.uniform(0, 2 * math.pi)))
        for k, w in zip(range(3, 9), weights, strict=True)
    )
    seed_xy = (
        side * 14.0 * laterality + float(rng.normal(0, 1.5)),
        8.0 + 2.0 * (1 - laterality) + float(rng.normal(0, 1.0)),
    )
    z_centre = float(rng.uniform(6.0, 13.0))
    z_half = float(0.5 * diameter * rng.uniform(0.6, 1.0))
    blobs: list[tuple[float, float, float, float]] = []
    if flags["necrosis"]:
        n = int(rng.integers(1, 4))
        volume = 4.0 / 3.0 * math.pi * (diameter / 2) ** 2 * z_half * float(rng.uniform(0.05, 0.2))
        r = (volume / n / (4.0 / 3.0 * math.pi)) ** (1 / 3)
        for _ in range(n):
            off = rng.normal(0, 0.15 * diameter / 2, size=3)
            blobs.append(
                (seed_xy[0] + float(off[0]), seed_xy[1] + 3.0 + float(off[1]), z_centre + float(off[2]), r)
            )
    nodes: list[tuple[float, float, float, float]] = []
    if rng.random() < 0.6:
        sides = [side] if laterality > 0.5 else [1, -1]
        for s in sides:
            nodes.append(
                (
                    s * 12.0 + float(rng.normal(0, 1)),
                    24.0,
                    float(rng.uniform(-25, -5)),
                    float(rng.uniform(3, 7)),
                )
            )
    return TumourParams(
        side=side,
        laterality=laterality,
        diameter_mm=diameter,
        z_centre_mm=z_centre,
        z_half_mm=z_half,
        seed_xy_mm=seed_xy,
        roughness=roughness,
        fourier=fourier,
        texture_sigma=texture_sigma,
        texture_corr_mm=texture_corr,
        flags=flags,
        necrosis_blobs=tuple(blobs),
        nodes=tuple(nodes),
    )


def _star_depth(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, cx: float, cy: float, radius: float, tp: TumourParams
) -> np.ndarray:
    """Approximate depth inside (mm, > 0 inside) of a radial-Fourier blob centred at (cx, cy, z_centre)."""
    dx, dy, dz = x - cx, y - cy, z - tp.z_centre_mm
    theta = np.arctan2(dy, dx)
    mod = np.ones_like(theta)
    for k, amp, phase in tp.fourier:
        mod += amp * np.cos(k * theta + phase)
    prof = np.sqrt(np.clip(1.0 - (dz / tp.z_half_mm) ** 2, 0.0, None))
    return np.minimum(radius * mod * prof - np.hypot(dx, dy), tp.z_half_mm - np.abs(dz))


def _ellipsoid_depth(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    c: tuple[float, float, float],
    semi: tuple[float, float, float],
) -> np.ndarray:
    rho = np.sqrt(((x - c[0]) / semi[0]) ** 2 + ((y - c[1]) / semi[1]) ** 2 + ((z - c[2]) / semi[2]) ** 2)
    return (1.0 - rho) * min(semi)


def paint_lesions(points: np.ndarray, struct: np.ndarray, tp: TumourParams) -> tuple[np.ndarray, np.ndarray]:
    """Paint nodes, tumour and necrosis onto ``struct`` (a copy is returned) and return the depth map.

    ``points``: float (..., 3) anatomical mm; ``struct``: int8 (...) from ``anatomy.structure_map``.
    Returns (struct int8 (...), depth float32 (...) in mm, 0 outside the tumour).
    """
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    out = struct.copy()
    for nx, ny, nz, r in tp.nodes:
        node = _ellipsoid_depth(x, y, z, (nx, ny, nz), (r, r, 1.3 * r)) > 0
        out[node & (struct != A.BACKGROUND)] = A.NODE
    radius = tp.diameter_mm / 2
    cx, cy = tp.seed_xy_mm
    depth = _star_depth(x, y, z, cx, cy, radius, tp)
    if tp.laterality < 0.75:  # NPL-like: mirror the half-shape with weight (1 - laterality)
        depth = np.maximum(depth, _star_depth(x, y, z, -cx, cy, radius * math.sqrt(1 - tp.laterality), tp))
    allowed = np.isin(struct, ALWAYS_ALLOWED)
    for name, structures in FLAG_STRUCTURES.items():
        if tp.flags[name]:
            allowed |= np.isin(struct, structures)
    if tp.flags["nasal_extension"]:
        lobe = _ellipsoid_depth(x, y, z, (0.0, -20.0, tp.z_centre_mm - 2), (11.0, 14.0, 8.0))
        depth = np.maximum(depth, lobe)
        allowed |= np.isin(struct, (A.SINUS_AIR, A.AIRWAY)) & (y > -34) & (np.abs(x) < 14)
    if tp.flags["tonsil_extension"]:
        sides = [1, -1] if tp.laterality < 0.4 else [tp.side]
        for s in sides:
            lobe = _ellipsoid_depth(x, y, z, (s * 15.0, 1.0, -20.0), (7.0, 9.0, 11.0))
            bridge = (np.abs(x - s * 14.0) < 7) & (y > -4) & (y < 14) & (z > -20) & (z < tp.z_centre_mm)
            depth = np.maximum(depth, np.where(bridge, 3.0, lobe))
        allowed |= np.isin(struct, (A.TONSIL,))
    inside = (depth > 0) & allowed
    out[inside] = A.TUMOUR
    for bx, by, bz, r in tp.necrosis_blobs:
        out[inside & (_ellipsoid_depth(x, y, z, (bx, by, bz), (r, r, r)) > 0)] = A.NECROSIS
    return out, np.where(inside, depth, 0.0).astype(np.float32)


class TextureField:
    """Unit-variance Gaussian random field around the tumour (anatomical mm), correlation length ``corr_mm``."""

    def __init__(
        self, rng: np.random.Generator, tp: TumourParams, step_mm: float = 1.5, half_mm: float = 48.0
    ):
        n = int(2 * half_mm / step_mm) + 1
        self.origin = np.array(
            [tp.seed_xy_mm[0] - half_mm, tp.seed_xy_mm[1] - half_mm, tp.z_centre_mm - half_mm]
        )
        self.step = step_mm
        field = gaussian_filter(
            rng.standard_normal((n, n, n)).astype(np.float32), tp.texture_corr_mm / step_mm
        )
        self.field = field / max(float(field.std()), 1e-6)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field values (float32 (N,)) at anatomical points ``(N, 3)``; 0 outside the box."""
        idx = ((points - self.origin) / self.step).T
        return map_coordinates(self.field, idx, order=1, mode="constant", cval=0.0).astype(np.float32)
