"""Enhanced / multi-frame MR: one InstanceHeader per frame from the functional groups.

Geometry lives in the Shared and Per-frame Functional Groups (PlanePositionSequence,
PlaneOrientationSequence, PixelMeasuresSequence, PixelValueTransformationSequence). An Enhanced MR
without functional groups (pydicom-data's ``emri_small.dcm``) has no geometry and is rejected.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset

from shared.data.dicom.header import InstanceHeader
from shared.data.dicom.values import floats, multi, number, optional_text, text
from shared.errors import DicomError


def _item(group: Dataset | None, seq: str) -> Dataset | None:
    if group is None:
        return None
    try:
        s = group.get(seq)
    except Exception:
        return None
    return s[0] if s else None


def _lookup(shared: Dataset | None, frame: Dataset | None, seq: str) -> Dataset | None:
    """Per-frame item wins over the shared one (PS3.3 C.7.6.16)."""
    return _item(frame, seq) or _item(shared, seq)


def expand_frames(ds: Dataset, base: InstanceHeader) -> list[InstanceHeader]:
    """Split a multi-frame MR dataset (read without pixels) into per-frame headers.

    Raises:
        DicomError: no functional groups, or a frame without position / orientation / pixel spacing.
    """
    n_frames = int(number(ds, "NumberOfFrames") or 1)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    if not shared_seq and not per_frame_seq:
        raise DicomError(
            f"{base.path}: Enhanced/multi-frame MR ({n_frames} frames) without functional groups, so without "
            "geometry (no PlanePositionSequence / PlaneOrientationSequence); expected Shared or Per-frame "
            "Functional Groups. Re-export the series as classic MR Image Storage."
        )
    shared = shared_seq[0] if shared_seq else None
    agent = optional_text(ds, "ContrastBolusAgent")
    usage = ds.get("ContrastBolusUsageSequence")
    if usage and any(text(u, "ContrastBolusAgentAdministered").upper() == "YES" for u in usage):
        agent = agent or "administered (ContrastBolusUsageSequence)"
    image_type = multi(ds, "ImageType")
    contrast = text(ds, "AcquisitionContrast").upper()
    out: list[InstanceHeader] = []
    for k in range(n_frames):
        frame = per_frame_seq[k] if per_frame_seq and k < len(per_frame_seq) else None
        pos = _lookup(shared, frame, "PlanePositionSequence")
        ori = _lookup(shared, frame, "PlaneOrientationSequence")
        meas = _lookup(shared, frame, "PixelMeasuresSequence")
        ipp = floats(pos, "ImagePositionPatient", 3) if pos is not None else None
        iop = floats(ori, "ImageOrientationPatient", 6) if ori is not None else None
        spacing = floats(meas, "PixelSpacing", 2) if meas is not None else None
        if ipp is None or iop is None or spacing is None:
            raise DicomError(
                f"{base.path}: frame {k + 1} of {n_frames} lacks ImagePositionPatient, ImageOrientationPatient or "
                "PixelSpacing in its functional groups; expected all three. The file is skipped."
            )
        xform = _lookup(shared, frame, "PixelValueTransformationSequence")
        timing = _lookup(shared, frame, "MRTimingAndRelatedParametersSequence")
        echo = _lookup(shared, frame, "MREchoSequence")
        ftype = _lookup(shared, frame, "MRImageFrameTypeSequence")
        content = _lookup(None, frame, "FrameContentSequence")
        kw: dict[str, Any] = dict(
            frame=k,
            n_frames=n_frames,
            ipp=ipp,
            iop=iop,
            pixel_spacing=spacing,
            slice_thickness=number(meas, "SliceThickness") if meas is not None else None,
            spacing_between=number(meas, "SpacingBetweenSlices") if meas is not None else None,
            rescale_slope=number(xform, "RescaleSlope") if xform is not None else None,
            rescale_intercept=number(xform, "RescaleIntercept") if xform is not None else None,
            contrast_agent=agent,
            instance_number=k + 1,
        )
        if timing is not None and base.tr is None:
            kw["tr"] = number(timing, "RepetitionTime")
        if echo is not None and base.te is None:
            kw["te"] = number(echo, "EffectiveEchoTime")
        if ftype is not None:
            ft = multi(ftype, "FrameType")
            kw["image_type"] = ft or image_type
            kw["acquisition_contrast"] = text(ftype, "AcquisitionContrast").upper() or contrast
        else:
            kw["acquisition_contrast"] = contrast
        if content is not None:
            tp = number(content, "TemporalPositionIndex")
            kw["temporal_position"] = None if tp is None else int(tp)
        out.append(replace(base, **kw))
    return out
