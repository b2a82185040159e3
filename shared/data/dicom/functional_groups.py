"""Shared and Per-frame Functional Groups of multi-frame objects (Enhanced MR, SEG): PS3.3 C.7.6.16."""

from __future__ import annotations

from pydicom.dataset import Dataset

from shared.data.dicom.values import floats

Plane = tuple[list[float], list[float], list[float], Dataset]


def _item(group: Dataset | None, seq: str) -> Dataset | None:
    if group is None:
        return None
    try:
        s = group.get(seq)
    except Exception:
        return None
    return s[0] if s else None


def group_item(shared: Dataset | None, frame: Dataset | None, seq: str) -> Dataset | None:
    """First item of ``seq`` for one frame; the per-frame item wins over the shared one."""
    return _item(frame, seq) or _item(shared, seq)


def frame_plane(shared: Dataset | None, frame: Dataset | None) -> Plane | None:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing, PixelMeasures item) of one frame,
    or None when any of the three is missing."""
    pos = group_item(shared, frame, "PlanePositionSequence")
    ori = group_item(shared, frame, "PlaneOrientationSequence")
    meas = group_item(shared, frame, "PixelMeasuresSequence")
    ipp = floats(pos, "ImagePositionPatient", 3) if pos is not None else None
    iop = floats(ori, "ImageOrientationPatient", 6) if ori is not None else None
    spacing = floats(meas, "PixelSpacing", 2) if meas is not None else None
    if ipp is None or iop is None or spacing is None or meas is None:
        return None
    return ipp, iop, spacing, meas
