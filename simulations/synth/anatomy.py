"""Analytic head-and-neck anatomy at the nasopharynx (domain reference, section 5.2).

Coordinates are anatomical LPS millimetres: origin at the nasopharyngeal airway centre, +x patient left,
+y posterior, +z superior. Structures are painted in order (later wins) on any array of points, so the phantom
is sampled directly on each site's acquisition grid without a high-resolution master volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Structure ids (int8). Each maps to a tissue class in STRUCTURE_TISSUE.
BACKGROUND, SKIN, SUBCUT_FAT, SOFT, DEEP_FAT, PPS_FAT, PAROTID, MUSCLE = 0, 1, 2, 3, 4, 5, 6, 7
MED_PTERYGOID, LAT_PTERYGOID, VELI, LONGUS, BONE, MARROW, CLIVUS_MARROW, CLIVUS_CORTEX = (
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
)
AIRWAY, SINUS_AIR, MUCOSA, PHARYNX_WALL, ADENOID, TONSIL, ICA, IJV, NODE, FLUID = (
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
)
TUMOUR, NECROSIS = 30, 31
N_STRUCTURES = 32

STRUCTURE_TISSUE: dict[int, str] = {
    BACKGROUND: "air",
    SKIN: "muscle",
    SUBCUT_FAT: "fat",
    SOFT: "muscle",
    DEEP_FAT: "fat",
    PPS_FAT: "fat",
    PAROTID: "parotid",
    MUSCLE: "muscle",
    MED_PTERYGOID: "muscle",
    LAT_PTERYGOID: "muscle",
    VELI: "muscle",
    LONGUS: "muscle",
    BONE: "air",
    MARROW: "fat",
    CLIVUS_MARROW: "fat",
    CLIVUS_CORTEX: "air",
    AIRWAY: "air",
    SINUS_AIR: "air",
    MUCOSA: "mucosa",
    PHARYNX_WALL: "muscle",
    ADENOID: "mucosa",
    TONSIL: "mucosa",
    ICA: "ica",
    IJV: "ijv",
    NODE: "node",
    FLUID: "fluid",
    TUMOUR: "tumour",
    NECROSIS: "necrosis",
}
#: Structures used as the muscle reference for ratios (calibration, site statistics).
REFERENCE_MUSCLES = (LONGUS, MED_PTERYGOID, LAT_PTERYGOID, MUSCLE)


@dataclass(frozen=True)
class AnatomyParams:
    """Per-patient anatomical variation: global scale and airway size (mm)."""

    scale: float
    airway_half_width: float
    airway_half_ap: float
    fat_mm: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> AnatomyParams:
        return cls(
            scale=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
            airway_half_width=float(rng.uniform(14, 17)),
            airway_half_ap=float(rng.uniform(8, 11)),
            fat_mm=float(rng.uniform(4, 10)),
        )


def _ell(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, ang_deg: float = 0.0
) -> np.ndarray:
    dx, dy = x - cx, y - cy
    if ang_deg:
        a = np.deg2rad(ang_deg)
        dx, dy = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    return (dx / ax) ** 2 + (dy / ay) ** 2 <= 1.0


def _zr(z: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (z >= lo) & (z <= hi)


def airway_shape(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, p: AnatomyParams, grow: float = 0.0
) -> np.ndarray:
    """Nasopharyngeal airway (rounded trapezoid, tapering to the roof) and oropharyngeal airway below -5 mm,
    grown outwards by ``grow`` mm (used for the mucosa and the pharyngeal wall)."""
    taper = np.clip(1.0 - (z - 10.0) / 14.0, 0.35, 1.0)  # > 0, so a and b never vanish
    a = np.maximum(p.airway_half_width * taper * (1.0 - 0.12 * y / p.airway_half_ap) + grow, 1e-3)
    b = p.airway_half_ap * taper + grow
    naso = (np.abs(x / a) ** 4 + np.abs(y / b) ** 4 <= 1.0) & _zr(z, -5.0 - grow, 18.0 + grow * 0.6)
    oro = _ell(x, y, 0.0, 2.0, 10.0 + grow, 6.0 + grow) & _zr(z, -40.0, -4.0)
    return naso | oro


def structure_map(points: np.ndarray, p: AnatomyParams) -> np.ndarray:
    """Structure id (int8) of each point. ``points``: float (..., 3) anatomical LPS mm."""
    x, y, z = (points[..., i] / p.scale for i in range(3))
    ax = np.abs(x)  # left/right symmetric structures
    s = np.zeros(x.shape, dtype=np.int8)

    def paint(mask: np.ndarray, sid: int) -> None:
        s[mask] = sid

    head = _ell(x, y, 0.0, 5.0, 75.0, 90.0)
    paint(head, SKIN)
    paint(_ell(x, y, 0.0, 5.0, 73.5, 88.5), SUBCUT_FAT)
    paint(_ell(x, y, 0.0, 5.0, 73.5 - p.fat_mm, 88.5 - p.fat_mm), SOFT)
    paint(_ell(ax, y, 36.0, -6.0, 14.0, 22.0) & _zr(z, -35, 20), DEEP_FAT)
    paint(_ell(ax, y, 30.0, -5.0, 6.0, 16.0, 30.0) & _zr(z, -30, 8), MED_PTERYGOID)
    paint(_ell(ax, y, 38.0, -12.0, 6.0, 14.0) & _zr(z, 2, 15), LAT_PTERYGOID)
    paint(_ell(ax, y, 58.0, -10.0, 6.0, 18.0), MUSCLE)  # masseter
    paint(_ell(ax, y, 58.0, 14.0, 10.0, 17.5) & _zr(z, -30, 15), PAROTID)
    paint(_ell(ax, y, 50.0, -5.0, 4.0, 14.0), BONE)  # mandibular ramus
    paint(_ell(ax, y, 50.0, -5.0, 2.5, 12.0), MARROW)
    maxillary = _zr(z, -20, 15)
    paint(_ell(ax, y, 25.0, -35.0, 14.0, 16.5) & maxillary, BONE)
    paint(_ell(ax, y, 25.0, -35.0, 12.5, 15.0) & maxillary, SINUS_AIR)
    nasal = (ax < 14.0) & (y > -70.0) & (y < -10.0) & _zr(z, -10, 20)
    paint(nasal, SINUS_AIR)
    paint(_ell(ax, y, 9.0, -38.0, 4.0, 20.0) & _zr(z, -5, 15), MUCOSA)  # turbinates
    paint(nasal & (ax < 1.0), BONE)  # septum
    paint(airway_shape(x, y, z, p, grow=9.0), PHARYNX_WALL)
    paint(_ell(ax, y, 22.0, 3.0, 6.0, 9.0) & _zr(z, -25, 15), PPS_FAT)
    paint((_ell(ax, y, 16.0, -2.0, 2.0, 4.0) | _ell(ax, y, 14.0, 6.0, 2.0, 4.0)) & _zr(z, -5, 12), VELI)
    paint(_ell(ax, y, 8.0, 17.0, 6.0, 4.5) & _zr(z, -35, 20), LONGUS)
    paint(airway_shape(x, y, z, p, grow=3.0), MUCOSA)
    paint(_ell(x, y, 0.0, p.airway_half_ap + 2.0, 10.0, 5.0) & _zr(z, 8, 20), ADENOID)
    paint(_ell(ax, y, p.airway_half_width + 1.0, -2.0, 4.0, 4.0) & _zr(z, 0, 15), MUCOSA)  # torus tubarius
    paint(_ell(ax, y, 15.0, 0.0, 5.0, 7.5) & _zr(z, -35, -10), TONSIL)
    paint(airway_shape(x, y, z, p), AIRWAY)
    paint(_ell(x, y, 0.0, 35.0, 15.0, 11.0) & (z < 10), BONE)  # C1/C2
    paint(_ell(x, y, 0.0, 35.0, 13.0, 9.0) & (z < 10), MARROW)
    paint(_ell(x, y, 0.0, 56.0, 8.0, 8.0) & (z < 10), FLUID)  # spinal canal
    clivus = _zr(z, 10, 35)
    paint(_ell(x, y, 0.0, 33.5, 12.0, 11.5) & clivus, CLIVUS_CORTEX)
    paint(_ell(x, y, 0.0, 33.5, 10.5, 10.0) & clivus, CLIVUS_MARROW)
    sphenoid = (ax < 12.0) & (np.abs(y + 5.0) < 11.0) & _zr(z, 21, 36)
    paint(sphenoid, BONE)
    paint(sphenoid & (ax < 10.0) & (np.abs(y + 5.0) < 9.0) & _zr(z, 22, 35), SINUS_AIR)
    paint(_ell(ax, y, 24.0, 18.0, 3.0, 3.0), ICA)
    paint(_ell(ax, y, 32.0, 24.0, 5.0, 5.0), IJV)
    s[~head] = BACKGROUND
    return s
