"""Resampling onto one grid per study with ``scipy.ndimage.map_coordinates`` and the DICOM geometry."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from shared.data.dicom.geometry import VolumeGeometry


def same_grid(a: VolumeGeometry, b: VolumeGeometry, tol: float = 1e-3) -> bool:
    return (
        a.shape == b.shape
        and np.allclose(a.origin, b.origin, atol=tol)
        and np.allclose(a.row_dir, b.row_dir, atol=1e-5)
        and np.allclose(a.col_dir, b.col_dir, atol=1e-5)
        and np.allclose(a.pixel_spacing, b.pixel_spacing, atol=1e-5)
        and np.allclose(a.positions, b.positions, atol=tol)
    )


def resample(volume: np.ndarray, src: VolumeGeometry, dst: VolumeGeometry, order: int = 1) -> np.ndarray:
    """Sample ``volume`` (Z, H, W) on grid ``src`` at the voxel centres of grid ``dst``.

    Returns float32 (Z', H', W') = dst.shape. ``order``: 1 (trilinear) for images, 0 (nearest) for
    label maps.

    The source covers its voxels' footprints: index -0.5 .. n-0.5 on each axis, not only the voxel
    centres 0 .. n-1. A target voxel centre inside the footprint but beyond the outermost centres takes
    the edge value (no extrapolation); only centres outside the footprint are 0. Without this, a target
    slice that lies on the source's first or last plane up to DICOM rounding (T1 and T2 of one slab,
    different matrices) falls a hair outside ``[0, n-1]`` and ``map_coordinates(mode="constant")``
    blanks it whole.
    """
    if same_grid(src, dst):
        return volume.astype(np.float32, copy=True)
    idx = src.to_index(dst.world())  # (Z', H', W', 3)
    upper = np.asarray(volume.shape, dtype=float) - 1.0
    outside = np.any((idx < -0.5) | (idx > upper + 0.5), axis=-1)
    coords = np.moveaxis(np.clip(idx, 0.0, upper), -1, 0)
    out = map_coordinates(volume.astype(np.float32, copy=False), coords, order=order, mode="nearest")
    out[outside] = 0.0
    return out.astype(np.float32, copy=False)


def resample_mask(mask: np.ndarray, src: VolumeGeometry, dst: VolumeGeometry) -> np.ndarray:
    """Binary mask (Z, H, W) onto ``dst``: trilinear then threshold 0.5 (smoother than nearest). uint8."""
    if same_grid(src, dst):
        return (mask > 0).astype(np.uint8)
    return (resample((mask > 0).astype(np.float32), src, dst, order=1) >= 0.5).astype(np.uint8)
