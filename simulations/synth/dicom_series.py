"""MR image series (T1, T2, T1CE, localiser, DWI) as pydicom datasets, in each site's DICOM dialect.

Sequence classification is possible from headers alone: ScanningSequence, RepetitionTime/EchoTime, ImageType
(LOCALIZER, DIFFUSION), ContrastBolusAgent or description tokens, and AcquisitionTime order (T1CE after T1/T2).
SeriesDescription follows the vendor's style, is sometimes empty or absent, and at the site with a
``site_mapping.json`` it is a local code that only the mapping explains.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)

from simulations.synth.sampling import SeriesGeometry
from simulations.synth.site_profile import SiteProfile

# The openjpeg encoder logs one INFO line per tile; that drowns the progress bar.
logging.getLogger("openjpeg").setLevel(logging.WARNING)

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "siemens": {
        "t1": "t1_tse_tra",
        "t2": "t2_tse_tra{fs}",
        "t1ce": "t1_tse{fs}_tra_post",
        "loc": "localizer",
        "dwi": "ep2d_diff_tra",
    },
    "ge": {
        "t1": "Ax T1 FSE",
        "t2": "Ax T2 FSE{FS}",
        "t1ce": "+C Ax T1{FS}",
        "loc": "3-Plane Loc",
        "dwi": "Ax DWI",
    },
    "philips": {
        "t1": "T1W_TSE",
        "t2": "T2W_TSE{SPAIR}",
        "t1ce": "T1W_TSE{SPIR}_GD",
        "loc": "Survey",
        "dwi": "DWI_b1000",
    },
    "uih": {
        "t1": "t1_fse_tra",
        "t2": "t2_fse_tra{fs}",
        "t1ce": "t1_fse_tra{fs}+c",
        "loc": "localizer",
        "dwi": "dwi_tra",
    },
    "canon": {"t1": "T1 AX", "t2": "T2 AX{FS}", "t1ce": "T1 AX{FS} +C", "loc": "Locator", "dwi": "DWI AX"},
}
#: Local codes used at the site that ships a site_mapping.json (the mapping is the only key to them).
LOCAL_CODES = {
    "t1": "NPX AX SEQ-A",
    "t2": "NPX AX SEQ-B",
    "t1ce": "NPX AX SEQ-C",
    "loc": "NPX SCOUT",
    "dwi": "NPX AX SEQ-D",
}
SERIES_NUMBER = {"loc": 1, "t1": 3, "t2": 4, "dwi": 5, "t1ce": 7}
ACQ_MINUTE = {"loc": 0, "t1": 2, "t2": 7, "dwi": 12, "t1ce": 18}


def make_uid(*parts: object) -> str:
    """Deterministic UID (2.25 form) from ``parts`` (seed, site, patient, series, instance ...)."""
    # pydicom's generate_uid(prefix=None) ignores entropy_srcs (random UUID), so derive the 2.25 UID ourselves.
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def description(profile: SiteProfile, kind: str, fat_sat: bool) -> str:
    if profile.site_mapping:
        return LOCAL_CODES[kind]
    text = DESCRIPTIONS[profile.vendor][kind]
    return text.format(
        fs="_fs" if fat_sat else "",
        FS=" FS" if fat_sat else "",
        SPAIR="_SPAIR" if fat_sat else "",
        SPIR="_SPIR" if fat_sat else "",
    )


@dataclass(frozen=True)
class StudyInfo:
    """Patient/study level attributes shared by every series of one study (identifiers stay in the site)."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_uid: str
    frame_uid: str
    study_date: str
    study_time: str
    accession: str
    uid_root: tuple


@dataclass(frozen=True)
class SeriesSpec:
    """What one series is: ``kind`` in t1 / t2 / t1ce / loc / dwi, with its geometry per image."""

    kind: str
    series_uid: str
    fat_sat: bool
    description: str | None


def acquisition_time(study: StudyInfo, kind: str, k: int) -> str:
    hh, mm = int(study.study_time[:2]), int(study.study_time[2:4]) + ACQ_MINUTE[kind]
    hh, mm = hh + mm // 60, mm % 60
    return f"{hh:02d}{mm:02d}{k % 60:02d}"


def _sequence_attrs(
    ds: Dataset, kind: str, fat_sat: bool, profile: SiteProfile, rng: np.random.Generator
) -> None:
    opts = ["FS"] if fat_sat else []
    if kind in ("t1", "t1ce"):
        ds.ScanningSequence, ds.SequenceVariant = "SE", "SK"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = (
            round(float(rng.uniform(400, 650)), 1),
            round(float(rng.uniform(8, 15)), 2),
            3,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    elif kind == "t2":
        ds.ScanningSequence, ds.SequenceVariant = "SE", "SK"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = (
            round(float(rng.uniform(3000, 4800)), 1),
            round(float(rng.uniform(80, 105)), 2),
            16,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    elif kind == "loc":
        ds.ScanningSequence, ds.SequenceVariant = "GR", "SP"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 8.6, 4.0, 1
        ds.FlipAngle = 20
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        opts = []
    elif kind == "dwi":
        ds.ScanningSequence, ds.SequenceVariant = "EP", ["SK", "SP"]
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 6000.0, 85.0, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
        ds.DiffusionBValue = 1000
        opts = ["FS"]
    ds.ScanOptions = opts
    ds.MRAcquisitionType = "2D"
    ds.MagneticFieldStrength = profile.field_t
    ds.ImagingFrequency = round(42.577 * profile.field_t, 4)
    ds.NumberOfAverages = 1
    if kind == "t1ce":
        if profile.agent_mode == "filled":
            ds.ContrastBolusAgent = profile.agent_name
        elif profile.agent_mode == "empty":
            ds.ContrastBolusAgent = ""


def mr_image(
    profile: SiteProfile,
    study: StudyInfo,
    spec: SeriesSpec,
    geom: SeriesGeometry,
    k: int,
    stored: np.ndarray,
    slope: float | None,
    rng: np.random.Generator,
    instance_number: int,
) -> Dataset:
    """One MR Image Storage dataset for slice ``k`` of ``geom``; ``stored``: uint16 (H, W).

    The series-level attributes are set here once; ``set_slice`` then moves the same dataset to the next slice
    (writing a series reuses one dataset, which is what keeps cohort generation fast).
    """
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate, ds.ContentDate = (study.study_date,) * 4
    ds.StudyTime = study.study_time
    ds.SeriesTime = acquisition_time(study, spec.kind, 0)
    ds.AccessionNumber = study.accession
    ds.Modality = "MR"
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = f"Synthetic {profile.name}"
    ds.ReferringPhysicianName = ""
    ds.StationName = f"{profile.vendor.upper()}MR{profile.index}"
    if spec.description is not None:
        ds.SeriesDescription = spec.description
        ds.ProtocolName = spec.description
    ds.ManufacturerModelName = profile.model
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.BodyPartExamined = "HEAD"
    _sequence_attrs(ds, spec.kind, spec.fat_sat, profile, rng)
    ds.SliceThickness = geom.slice_thickness
    ds.SpacingBetweenSlices = geom.slice_spacing
    ds.SoftwareVersions = "nasofl-synth 1"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, spec.series_uid
    ds.StudyID = study.accession[-6:]
    ds.SeriesNumber = SERIES_NUMBER[spec.kind]
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing = [round(float(v), 6) for v in geom.pixel_spacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, profile.bits_stored, profile.bits_stored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, slope, "US"
    set_slice(ds, profile, study, spec, geom, k, stored, instance_number)
    return ds


def set_slice(
    ds: Dataset,
    profile: SiteProfile,
    study: StudyInfo,
    spec: SeriesSpec,
    geom: SeriesGeometry,
    k: int,
    stored: np.ndarray,
    instance_number: int,
    sop_key: int | None = None,
) -> None:
    """Point ``ds`` at slice ``k`` of ``geom``: UIDs, instance number, position, time and pixel data (uint16 (H, W))."""
    sop_uid = make_uid(*study.uid_root, spec.kind, "sop", k if sop_key is None else sop_key)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if profile.transfer_syntax == "implicit" else ExplicitVRLittleEndian
    )
    ds.SOPInstanceUID = sop_uid
    ds.AcquisitionTime = ds.ContentTime = acquisition_time(study, spec.kind, k)
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = geom.ipp(k)
    ds.ImageOrientationPatient = geom.iop
    if not profile.slice_location_omitted and spec.kind != "loc":
        ds.SliceLocation = round(float(np.dot(geom.normal, geom.ipp(k))), 4)
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    pixels = np.ascontiguousarray(stored, dtype=np.uint16)
    # openjpeg's encoder uses 6 DWT resolutions and fails below 32 px: tiny images stay uncompressed.
    if profile.transfer_syntax == "jpeg2000" and min(pixels.shape) >= 32:
        ds.compress(JPEG2000Lossless, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()


def save(ds: Dataset, path: Path) -> int:
    """Write ``ds`` as a DICOM Part 10 file (transfer syntax from its file meta); returns the byte count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size
