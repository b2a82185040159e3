"""Enhanced / multi-frame MR: one InstanceHeader per frame from the functional groups.

Geometry lives in the Shared and Per-frame Functional Groups (PlanePositionSequence,
PlaneOrientationSequence, PixelMeasuresSequence, PixelValueTransformationSequence). An Enhanced MR
without functional groups (pydicom-data's ``emri_small.dcm``) has no geometry and is rejected.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset

from shared.data.dicom.functional_groups import frame_plane, group_item
from shared.data.dicom.header import InstanceHeader
from shared.data.dicom.values import multi, number, optional_text, text
from shared.errors import DicomError


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
        plane = frame_plane(shared, frame)
        if plane is None:
            raise DicomError(
                f"{base.path}: frame {k + 1} of {n_frames} lacks ImagePositionPatient, ImageOrientationPatient or "
                "PixelSpacing in its functional groups; expected all three. The file is skipped."
            )
        ipp, iop, spacing, meas = plane
        xform = group_item(shared, frame, "PixelValueTransformationSequence")
        timing = group_item(shared, frame, "MRTimingAndRelatedParametersSequence")
        echo = group_item(shared, frame, "MREchoSequence")
        ftype = group_item(shared, frame, "MRImageFrameTypeSequence")
        content = group_item(None, frame, "FrameContentSequence")
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
