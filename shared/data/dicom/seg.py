"""DICOM SEG (BINARY and FRACTIONAL) read with pydicom alone, placed on a target grid.

Each frame carries SegmentIdentificationSequence.ReferencedSegmentNumber and a PlanePositionSequence
(per-frame functional groups); orientation and pixel spacing usually come from the shared groups.
Empty frames may be omitted, so one segment's frames are laid on a regular grid before resampling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from shared.data.dicom.functional_groups import frame_plane, group_item
from shared.data.dicom.geometry import VolumeGeometry
from shared.data.dicom.resample import resample_mask
from shared.data.dicom.values import number, text
from shared.errors import DicomError


@dataclass
class SegFrame:
    segment: int
    ipp: tuple[float, ...]
    iop: tuple[float, ...]
    spacing: tuple[float, ...]  # (dr, dc)
    mask: np.ndarray  # (H, W) bool


@dataclass
class Segmentation:
    segment_labels: dict[int, str]
    frames: list[SegFrame]
    spacing_between: float | None


def parse_seg(ds: Dataset, rel: str) -> Segmentation:
    """Decode every frame of a SEG dataset (read with pixels).

    Raises:
        DicomError: not a BINARY/FRACTIONAL SEG, or frames without position / orientation.
    """
    seg_type = text(ds, "SegmentationType").upper()
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise DicomError(f"{rel}: SegmentationType {seg_type or 'absent'!r}; expected BINARY or FRACTIONAL")
    labels = {int(s.SegmentNumber): text(s, "SegmentLabel") for s in ds.get("SegmentSequence", []) or []}
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as err:
        raise DicomError(
            f"{rel}: cannot decode SEG pixel data ({type(err).__name__}: {str(err)[:160]})"
        ) from None
    if arr.ndim == 2:
        arr = arr[None]
    if seg_type == "FRACTIONAL":
        maxv = number(ds, "MaximumFractionalValue") or 255.0
        binary = arr.astype(np.float32) / maxv >= 0.5
    else:
        binary = arr > 0
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames: list[SegFrame] = []
    spacing_between = None
    for k in range(binary.shape[0]):
        fg = per_frame[k] if k < len(per_frame) else None
        plane = frame_plane(shared, fg)
        sid = group_item(shared, fg, "SegmentIdentificationSequence")
        if plane is None:
            raise DicomError(
                f"{rel}: SEG frame {k + 1} lacks PlanePosition / PlaneOrientation / PixelMeasures"
            )
        ipp, iop, sp, meas = plane
        if spacing_between is None:
            spacing_between = number(meas, "SpacingBetweenSlices")
        seg_no = int(number(sid, "ReferencedSegmentNumber") or 1) if sid is not None else 1
        frames.append(SegFrame(seg_no, ipp, iop, sp, binary[k]))
    return Segmentation(labels, frames, spacing_between)


def select_segment(seg: Segmentation, patterns: tuple[str, ...]) -> tuple[int | None, str]:
    rx = [re.compile(p, re.IGNORECASE) for p in patterns]
    hits = [n for n, lab in sorted(seg.segment_labels.items()) if any(x.search(lab.strip()) for x in rx)]
    if not hits:
        return (
            None,
            f"no segment label matches the tumour patterns; labels found: {sorted(seg.segment_labels.values())}",
        )
    note = f"several tumour segments; used {seg.segment_labels[hits[0]]!r}" if len(hits) > 1 else ""
    return hits[0], note


def segment_mask(seg: Segmentation, segment: int, target: VolumeGeometry) -> np.ndarray:
    """Mask of one segment on ``target``'s grid, uint8 (Z, H, W)."""
    frames = [f for f in seg.frames if f.segment == segment]
    z, h, w = target.shape
    if not frames:
        return np.zeros((z, h, w), dtype=np.uint8)
    iop = frames[0].iop
    n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    n /= np.linalg.norm(n)
    d = np.array([float(n @ np.asarray(f.ipp)) for f in frames])
    order = np.argsort(d)
    d = d[order]
    frames = [frames[i] for i in order]
    steps = np.diff(d)
    step = seg.spacing_between or (float(np.min(steps[steps > 1e-3])) if np.any(steps > 1e-3) else 1.0)
    n_slices = int(round((d[-1] - d[0]) / step)) + 1
    hh, ww = frames[0].mask.shape
    # One empty plane on each side: SEG omits empty frames, so the planes just beyond the first and last
    # frame ARE empty; without them, target planes that sit on the first/last frame up to rounding error
    # fall outside the source volume and map_coordinates returns 0 for them.
    vol = np.zeros((n_slices + 2, hh, ww), dtype=np.uint8)
    for f, df in zip(frames, d, strict=True):
        vol[1 + int(round((df - d[0]) / step))] |= f.mask.astype(np.uint8)
    origin = np.asarray(frames[0].ipp, dtype=float) - step * n
    geom = VolumeGeometry(
        origin=tuple(float(v) for v in origin),
        row_dir=tuple(float(v) for v in iop[:3]),
        col_dir=tuple(float(v) for v in iop[3:]),
        pixel_spacing=(float(frames[0].spacing[0]), float(frames[0].spacing[1])),
        positions=tuple(float(d[0] + (k - 1) * step) for k in range(n_slices + 2)),
        rows=hh,
        columns=ww,
    )
    return resample_mask(vol, geom, target)
