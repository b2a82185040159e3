"""RTSTRUCT for contoured patients: CLOSED_PLANAR polygons in patient mm, drawn on one MR series.

Polygons come from marching squares (contourpy) at level 0.5 on each slice of the truth mask, padded so every
line closes. Several contours per plane occur (islands), and holes appear as separate contours (fill even-odd).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RTStructureSetStorage,
)

from shared.data.contours import slice_polygons
from simulations.synth.dicom_series import StudyInfo, make_uid
from simulations.synth.sampling import SeriesGeometry
from simulations.synth.site_profile import SiteProfile


def mask_contours(mask: np.ndarray, geom: SeriesGeometry) -> list[tuple[int, np.ndarray]]:
    """(slice index, float (N, 3) LPS mm) for every closed contour of a uint8 (Z, H, W) mask on ``geom``."""
    out = []
    row, col = np.asarray(geom.row_dir), np.asarray(geom.col_dir)
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        origin = np.asarray(geom.ipp(k))
        for poly in slice_polygons(mask[k]):
            lps = (
                origin
                + poly[:, :1] * geom.pixel_spacing[1] * row
                + poly[:, 1:2] * geom.pixel_spacing[0] * col
            )
            out.append((k, lps))
    return out


def rtstruct(
    profile: SiteProfile,
    study: StudyInfo,
    geom: SeriesGeometry,
    series_uid: str,
    sop_uids: list[str],
    rois: list[tuple[str, np.ndarray]],
    series_time: str,
) -> Dataset:
    """RT Structure Set referencing the MR series ``series_uid`` (``sop_uids[k]`` = slice k of ``geom``).

    ``rois``: (ROI name, uint8 (Z, H, W) mask on ``geom``). ContourImageSequence is omitted at sites with
    ``profile.contour_image_refs`` false (contours then match slices only by position).
    """
    ds = Dataset()
    uid = make_uid(*study.uid_root, "rtstruct")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, uid
    ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
    ds.SeriesDate, ds.SeriesTime = study.study_date, series_time
    ds.AccessionNumber = study.accession
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "nasofl-synth"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = "RT contours"
    ds.OperatorsName = ""
    ds.ManufacturerModelName = "synthetic TPS"
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.SoftwareVersions = "nasofl-synth 1"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = make_uid(*study.uid_root, "rtstruct-series")
    ds.StudyID = study.accession[-6:]
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "GTV"
    ds.StructureSetDate, ds.StructureSetTime = study.study_date, series_time
    images = Sequence()
    for sop in sop_uids:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = MRImageStorage, sop
        images.append(item)
    frame = Dataset()
    frame.FrameOfReferenceUID = study.frame_uid
    if profile.contour_image_refs:
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ContourImageSequence = images
        ref_study = Dataset()
        ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component Management (retired)
        ref_study.ReferencedSOPInstanceUID = study.study_uid
        ref_study.RTReferencedSeriesSequence = Sequence([series])
        frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = (
        Sequence(),
        Sequence(),
        Sequence(),
    )
    for number, (name, mask) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, study.frame_uid, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor = [255, 0, 0] if number == 1 else [0, 128, 255]
        rc.ReferencedROINumber = number
        rc.ContourSequence = Sequence()
        for contour_number, (k, lps) in enumerate(mask_contours(mask, geom), start=1):
            item = Dataset()
            if profile.contour_image_refs:
                ref = Dataset()
                ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = MRImageStorage, sop_uids[k]
                item.ContourImageSequence = Sequence([ref])
            item.ContourNumber = contour_number
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(lps)
            item.ContourData = [f"{v:.3f}" for v in lps.reshape(-1)]
            rc.ContourSequence.append(item)
        ds.ROIContourSequence.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "GTV", ""
        ds.RTROIObservationsSequence.append(obs)
    return ds
