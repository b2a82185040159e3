"""Series every study has but training must ignore: a 3-plane localiser and (at some sites) a DWI."""

from __future__ import annotations

import numpy as np

from simulations.synth import anatomy as A
from simulations.synth.intensity import ratio_lut
from simulations.synth.sampling import PatientPhantom, SeriesGeometry
from simulations.synth.site_profile import SiteProfile

LOCALISER_MATRIX = 64
LOCALISER_PIXEL_MM = 4.0


def localiser_planes(centre: np.ndarray) -> list[SeriesGeometry]:
    """Axial, sagittal and coronal single-slice geometries (64 x 64 at 4 mm) through ``centre`` (LPS mm)."""
    half = (LOCALISER_MATRIX - 1) / 2 * LOCALISER_PIXEL_MM
    planes = []
    for row, col in (((1, 0, 0), (0, 1, 0)), ((0, 1, 0), (0, 0, -1)), ((1, 0, 0), (0, 0, -1))):
        r, c = np.array(row, float), np.array(col, float)
        ipp0 = centre - half * (r + c)
        planes.append(
            SeriesGeometry(
                row_dir=row,
                col_dir=col,
                ipp0=tuple(float(v) for v in ipp0),
                pixel_spacing=(LOCALISER_PIXEL_MM, LOCALISER_PIXEL_MM),
                slice_spacing=8.0,
                slice_thickness=8.0,
                shape=(1, LOCALISER_MATRIX, LOCALISER_MATRIX),
            )
        )
    return planes


def localiser_images(
    ph: PatientPhantom, profile: SiteProfile, rng: np.random.Generator
) -> list[tuple[SeriesGeometry, np.ndarray]]:
    """Three (geometry, uint16 (64, 64)) localiser images rendered with T1-like contrast."""
    out = []
    lut = np.exp(ratio_lut(0))
    for geom in localiser_planes(np.array([0.0, 6.0, 0.0])):
        pts = ph.anatomical(geom.points())[0, 0]
        signal = lut[A.structure_map(pts, ph.anatomy)] * profile.muscle_level * 0.5
        signal = np.hypot(
            signal + rng.normal(0, 0.04 * profile.muscle_level, signal.shape),
            rng.normal(0, 0.04 * profile.muscle_level, signal.shape),
        )
        out.append((geom, np.clip(np.rint(signal), 0, 2**profile.bits_stored - 1).astype(np.uint16)))
    return out


def dwi_image(
    ph: PatientPhantom, profile: SiteProfile, rng: np.random.Generator
) -> tuple[SeriesGeometry, np.ndarray]:
    """A b=1000 DWI on every other voxel of the T2 grid: (geometry, uint16 (Z, H/2, W/2))."""
    g = ph.geometry
    geom = SeriesGeometry(
        row_dir=g.row_dir,
        col_dir=g.col_dir,
        ipp0=g.ipp0,
        pixel_spacing=(2 * g.pixel_spacing[0], 2 * g.pixel_spacing[1]),
        slice_spacing=g.slice_spacing,
        slice_thickness=g.slice_thickness,
        shape=(g.shape[0], g.shape[1] // 2, g.shape[2] // 2),
    )
    t2 = ph.stored["t2"][:, ::2, ::2].astype(np.float32) * 0.35
    noisy = np.hypot(
        t2 + rng.normal(0, 0.05 * t2.mean() + 1, t2.shape), rng.normal(0, 0.05 * t2.mean() + 1, t2.shape)
    )
    return geom, np.clip(np.rint(noisy), 0, 2**profile.bits_stored - 1).astype(np.uint16)
