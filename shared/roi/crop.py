"""ROI cropping around the predicted tumour: largest component(s), slice choice, square box with margin."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def largest_components(mask: np.ndarray, min_fraction: float = 0.2) -> np.ndarray:
    """uint8 mask keeping the largest 3-D connected component and any other at least ``min_fraction`` of its
    size (NPL extension lobes can be separate). Empty input -> empty output. ``mask (Z, H, W)`` any int/bool."""
    binary = np.asarray(mask) > 0
    labels, n = ndimage.label(binary)
    if n == 0:
        return np.zeros(binary.shape, dtype=np.uint8)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= min_fraction * sizes.max())[0] + 1
    return np.isin(labels, keep).astype(np.uint8)


def select_slices(mask: np.ndarray, k: int) -> list[int]:
    """Indices (ascending) of the ``k`` axial slices with the largest mask area (fewer if fewer have tumour)."""
    area = np.asarray(mask).reshape(mask.shape[0], -1).sum(axis=1)
    nonempty = np.nonzero(area > 0)[0]
    order = nonempty[np.argsort(-area[nonempty], kind="stable")]
    return sorted(int(z) for z in order[:k])


def roi_box(mask2d: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` half-open square box around the mask's bounding box plus ``margin`` pixels,
    clipped to the image. The square keeps the tumour's aspect ratio after resizing."""
    ys, xs = np.nonzero(mask2d)
    if len(ys) == 0:
        raise ValueError("roi_box on an empty slice: expected at least one mask pixel")
    h, w = mask2d.shape
    y0, y1 = int(ys.min()) - margin, int(ys.max()) + 1 + margin
    x0, x1 = int(xs.min()) - margin, int(xs.max()) + 1 + margin
    side = min(max(y1 - y0, x1 - x0), h, w)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    y0 = int(round(cy - side / 2.0))
    x0 = int(round(cx - side / 2.0))
    y0 = min(max(0, y0), h - side)
    x0 = min(max(0, x0), w - side)
    return y0, y0 + side, x0, x0 + side


def roi_crop(slices: Sequence[np.ndarray], box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop each ``(H, W)`` slice to ``box`` and resize (bilinear) to ``(C, size, size)`` float32; channel order
    is the order of ``slices``."""
    y0, y1, x0, x1 = box
    stack = np.stack([np.asarray(s, dtype=np.float32)[y0:y1, x0:x1] for s in slices])
    t = torch.from_numpy(stack)[None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t[0].numpy()
