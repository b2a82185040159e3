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


#: Voxel-index tolerance: a sample this close outside the source volume is on its edge (rounded DICOM strings).
EDGE_TOLERANCE = 1e-3


def snap_to_edges(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``coords (3, ...)`` voxel indices; those within :data:`EDGE_TOLERANCE` outside ``[0, n - 1]`` are moved onto
    the edge. ``map_coordinates(mode="constant")`` returns 0 for any point outside, so without this the last row of
    a mask read back from a SEG whose geometry strings are rounded (j = 47.000001 of 48) is lost."""
    out = coords.copy()
    for axis, n in enumerate(shape):
        c = out[axis]
        c[(c < 0) & (c >= -EDGE_TOLERANCE)] = 0.0
        c[(c > n - 1) & (c <= n - 1 + EDGE_TOLERANCE)] = float(n - 1)
    return out


def resample(volume: np.ndarray, src: VolumeGeometry, dst: VolumeGeometry, order: int = 1) -> np.ndarray:
    """Sample ``volume`` (Z, H, W) on grid ``src`` at the voxel centres of grid ``dst``.

    Returns float32 (Z', H', W') = dst.shape; voxels outside the source volume are 0.
    ``order``: 1 (trilinear) for images, 0 (nearest) for label maps.
    """
    if same_grid(src, dst):
        return volume.astype(np.float32, copy=True)
    idx = src.to_index(dst.world())  # (Z', H', W', 3)
    coords = snap_to_edges(np.moveaxis(idx, -1, 0), volume.shape)
    out = map_coordinates(
        volume.astype(np.float32, copy=False), coords, order=order, mode="constant", cval=0.0
    )
    return out.astype(np.float32, copy=False)


def resample_mask(mask: np.ndarray, src: VolumeGeometry, dst: VolumeGeometry) -> np.ndarray:
    """Binary mask (Z, H, W) onto ``dst``: trilinear then threshold 0.5 (smoother than nearest). uint8."""
    if same_grid(src, dst):
        return (mask > 0).astype(np.uint8)
    return (resample((mask > 0).astype(np.float32), src, dst, order=1) >= 0.5).astype(np.uint8)
