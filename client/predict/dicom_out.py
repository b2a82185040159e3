"""The predicted tumour mask as DICOM SEG (highdicom) and as RTSTRUCT (pydicom), both referencing the source
MR images of the reference series, so a viewer or a treatment planning system loads them beside the images.

Both are written on the reference series' own slices. The RTSTRUCT's polygons come from marching squares at
level 0.5 (the synthetic cohort's writer): filled even-odd at pixel centres they give back the mask exactly.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr.coding import CodedConcept
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    generate_uid,
)

from shared.data.contours import slice_polygons
from shared.data.dicom.geometry import VolumeGeometry
from shared.errors import DicomError

#: Matches ``shared.data.settings.DEFAULT_ROI_PATTERNS``: our own ingestion reads these objects back.
ROI_NAME = "GTVnx predicted"
#: Patient and study attributes copied from the source images (type 2: written empty when the source lacks them).
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def read_sources(study_dir: Path, paths: list[str]) -> list[Dataset]:
    """The reference series' files, one per slice in slice order. Multi-frame sources are not supported yet."""
    if len(set(paths)) != len(paths):
        raise DicomError(
            f"{paths[0]}: the reference series is one multi-frame (enhanced) image; writing SEG / RTSTRUCT on "
            "multi-frame sources is not supported yet (the classification results are still valid)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(study_dir / p) for p in paths]


def write_seg(sources: list[Dataset], mask: np.ndarray, path: Path, software: str) -> Path:
    """DICOM SEG (binary, one segment) of uint8 ``mask (Z, H, W)`` on ``sources`` (slice k = ``sources[k]``)."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="nasofl U-Net segmenter",
        version=software,
        family=codes.cid7162.ArtificialIntelligence,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=ROI_NAME,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=CodedConcept("108369006", "SCT", "Neoplasm"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=(np.asarray(mask) > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="nasofl",
        manufacturer_model_name="nasofl-site predict",
        software_versions=software,
        device_serial_number="none",
        series_description="nasofl predicted tumour (decision support)",
    )
    _exact_source_geometry(seg, sources)
    seg.save_as(path)
    return path


def _exact_source_geometry(seg: Dataset, sources: list[Dataset]) -> None:
    """highdicom re-formats PixelSpacing and ImagePositionPatient to fewer digits (4.0208333 -> 4.0208): over a
    48-pixel row that moves the last column off the source grid and a reader drops it. Put back the source
    images' own strings, frame by frame (matched through the frame's source image reference)."""
    by_uid = {s.SOPInstanceUID: s for s in sources}
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared.PixelMeasuresSequence[0].PixelSpacing = sources[0].PixelSpacing
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frame.PlanePositionSequence[0].ImagePositionPatient = by_uid[ref].ImagePositionPatient


def _lps_contours(mask: np.ndarray, geom: VolumeGeometry) -> list[tuple[int, np.ndarray]]:
    """(slice index, float (N, 3) LPS mm) for every closed contour of ``mask (Z, H, W)`` on ``geom``."""
    out = []
    row, col = np.asarray(geom.row_dir), np.asarray(geom.col_dir)
    dr, dc = geom.pixel_spacing
    origin, pos = np.asarray(geom.origin), np.asarray(geom.positions)
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        slice_origin = origin + (pos[k] - pos[0]) * geom.normal
        for poly in slice_polygons(mask[k]):  # (N, 2) as (column, row)
            out.append((k, slice_origin + poly[:, :1] * dc * row + poly[:, 1:2] * dr * col))
    return out


CONTOUR_DATA = Tag(0x3006, 0x0050)


def _ds_element(tag: BaseTag, values: np.ndarray) -> RawDataElement:
    """A DS element written as is: pydicom validates a DS value per number on assignment (seconds for a few
    thousand contours); these are formatted within DS's 16 characters here."""
    text = "\\".join(f"{v:.4f}" for v in values).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(tag, "DS", len(text), text, 0, False, True)


def write_rtstruct(
    sources: list[Dataset], mask: np.ndarray, geom: VolumeGeometry, path: Path, software: str
) -> Path:
    """RT Structure Set with one CLOSED_PLANAR ROI for uint8 ``mask (Z, H, W)`` on ``geom`` (the sources' grid)."""
    first = sources[0]
    now = time.gmtime()
    date, tod = time.strftime("%Y%m%d", now), time.strftime("%H%M%S", now)
    uid = generate_uid()
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, uid
    for key in _PATIENT_STUDY:
        setattr(ds, key, first.get(key, ""))
    ds.SeriesDate, ds.SeriesTime = date, tod
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "nasofl"
    ds.ManufacturerModelName = "nasofl-site predict"
    ds.SoftwareVersions = software
    ds.SeriesDescription = "nasofl predicted tumour (decision support)"
    ds.OperatorsName = ""
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9902
    ds.InstanceNumber = 1
    frame_uid = first.FrameOfReferenceUID
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = "nasofl GTV"
    ds.StructureSetDate, ds.StructureSetTime = date, tod
    images = Sequence()
    for src in sources:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
        images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = images
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component Management (retired)
    ref_study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    ref_study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = 1, frame_uid, ROI_NAME
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    ds.StructureSetROISequence = Sequence([roi])
    rc = Dataset()
    rc.ROIDisplayColor = [255, 0, 0]
    rc.ReferencedROINumber = 1
    rc.ContourSequence = Sequence()
    for number, (k, lps) in enumerate(_lps_contours(np.asarray(mask), geom), start=1):
        item = Dataset()
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = (
            sources[k].SOPClassUID,
            sources[k].SOPInstanceUID,
        )
        item.ContourImageSequence = Sequence([ref])
        item.ContourNumber = number
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = len(lps)
        item[CONTOUR_DATA] = _ds_element(CONTOUR_DATA, lps.reshape(-1))
        rc.ContourSequence.append(item)
    ds.ROIContourSequence = Sequence([rc])
    obs = Dataset()
    obs.ObservationNumber, obs.ReferencedROINumber = 1, 1
    obs.RTROIInterpretedType, obs.ROIInterpreter = "GTV", ""
    ds.RTROIObservationsSequence = Sequence([obs])
    ds.save_as(path, enforce_file_format=True)
    return path
