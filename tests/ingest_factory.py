"""Hand-made DICOM for the ingestion tests (written with pydicom into tmp_path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RTStructureSetStorage, generate_uid

Field = Callable[[np.ndarray], np.ndarray]  # (..., 3) LPS mm -> value


def linear_field(p: np.ndarray) -> np.ndarray:
    """Analytic volume: exact under trilinear interpolation."""
    return 500.0 + 2.0 * p[..., 0] + 3.0 * p[..., 1] + 4.0 * p[..., 2]


def _save(ds: Dataset, path: Path, sop_class: str, ts: str = ExplicitVRLittleEndian) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    patient_id: str,
    study_uid: str,
    *,
    n_slices: int = 8,
    rows: int = 24,
    cols: int = 20,
    spacing: tuple[float, float] = (1.5, 1.25),  # (dr, dc)
    step: float = 4.0,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    origin: tuple[float, float, float] = (-12.0, -15.0, -10.0),
    field: Field = linear_field,
    tr: float | None = 500.0,
    te: float | None = 15.0,
    scanning: str = "SE",
    description: str | None = None,
    agent: str | None = None,
    acq_time: str = "100000",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
    frame_of_ref: str = "1.2.3.4.5",
    patient_name: str = "Doe^Jane",
    series_number: int = 1,
    slope: float = 1.0,
    shuffle_seed: int | None = 0,
    positions: list[float] | None = None,
    ts: str = ExplicitVRLittleEndian,
) -> list[tuple[Path, Dataset]]:
    """Write an MR series; InstanceNumbers shuffled, SliceLocation absent. Returns [(path, dataset)]."""
    series_uid = generate_uid()
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    offsets = positions if positions is not None else [k * step for k in range(n_slices)]
    order = list(range(len(offsets)))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    out = []
    jj, ii = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    for k, off in enumerate(offsets):
        ipp = np.asarray(origin, float) + off * normal
        pts = ipp + ii[..., None] * spacing[1] * row_dir + jj[..., None] * spacing[0] * col_dir
        stored = np.clip(np.round(field(pts) / slope), 0, 65535).astype(np.uint16)
        ds = Dataset()
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: descriptions like "T1 增强"
        ds.Modality = "MR"
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "100000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_ref
        ds.SeriesNumber = series_number
        ds.InstanceNumber = order[k] + 1
        ds.ImageType = list(image_type)
        ds.ScanningSequence = scanning
        ds.SequenceVariant = "NONE"
        if tr is not None:
            ds.RepetitionTime = tr
        if te is not None:
            ds.EchoTime = te
        if description is not None:
            ds.SeriesDescription = description
        if agent is not None:
            ds.ContrastBolusAgent = agent
        ds.AcquisitionTime = acq_time
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = step
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.PixelData = stored.tobytes()
        path = folder / f"{series_number:03d}_{k:03d}.dcm"
        _save(ds, path, MRImageStorage, ts)
        out.append((path, ds))
    return out


def write_rtstruct(
    path: Path,
    patient_id: str,
    study_uid: str,
    rois: list[tuple[str, str, list[tuple[np.ndarray, str | None]]]],
    frame_of_ref: str = "1.2.3.4.5",
) -> Dataset:
    """rois: [(name, interpreted type, [(points (N, 3) LPS, referenced SOP uid or None), ...])]."""
    ds = Dataset()
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.PatientID = patient_id
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = frame_of_ref
    ss, rcs, obs = [], [], []
    for n, (name, kind, contours) in enumerate(rois, start=1):
        s = Dataset()
        s.ROINumber, s.ROIName, s.ReferencedFrameOfReferenceUID = n, name, frame_of_ref
        ss.append(s)
        o = Dataset()
        o.ObservationNumber, o.ReferencedROINumber, o.RTROIInterpretedType = n, n, kind
        obs.append(o)
        rc = Dataset()
        rc.ReferencedROINumber = n
        items = []
        for pts, ref in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [round(float(v), 4) for v in np.asarray(pts).ravel()]
            if ref is not None:
                ci = Dataset()
                ci.ReferencedSOPClassUID = MRImageStorage
                ci.ReferencedSOPInstanceUID = ref
                c.ContourImageSequence = Sequence([ci])
            items.append(c)
        rc.ContourSequence = Sequence(items)
        rcs.append(rc)
    ds.StructureSetROISequence = Sequence(ss)
    ds.ROIContourSequence = Sequence(rcs)
    ds.RTROIObservationsSequence = Sequence(obs)
    _save(ds, path, RTStructureSetStorage)
    return ds


def square(cx: float, cy: float, half: float, z: float) -> np.ndarray:
    return np.array(
        [
            [cx - half, cy - half, z],
            [cx + half, cy - half, z],
            [cx + half, cy + half, z],
            [cx - half, cy + half, z],
        ]
    )


def write_labels(site: Path, rows: list[tuple[str, str]], header: str = "patient_id,diagnosis") -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / "labels.csv").write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))


def write_patient(site: Path, pid: str, diagnosis_mask: bool = True, folder: str | None = None) -> dict:
    """A complete patient: axial T2, T1 (earlier), T1 after contrast (later, no agent), GTVnx RTSTRUCT."""
    study = generate_uid()
    base = site / (folder or pid)
    t2 = write_series(base / "t2", pid, study, tr=4000, te=100, series_number=2, acq_time="100500")
    t1 = write_series(base / "t1", pid, study, tr=500, te=12, series_number=1, acq_time="100000")
    t1ce = write_series(base / "t1c", pid, study, tr=500, te=12, series_number=3, acq_time="102000")
    z = t2[0][1].ImagePositionPatient[2]
    # slice at z + 8 (third position), refs missing
    rois = [
        ("GTVnx", "GTV", [(square(0.0, 0.0, 4.0, z + 8.0), None), (square(0.0, 0.0, 4.0, z + 12.0), None)])
    ]
    if diagnosis_mask:
        write_rtstruct(base / "rs.dcm", pid, study, rois)
    return {"study": study, "t2": t2, "t1": t1, "t1ce": t1ce}


def write_enhanced(
    path: Path,
    patient_id: str,
    study_uid: str,
    *,
    n_frames: int = 6,
    rows: int = 16,
    cols: int = 18,
    spacing: tuple[float, float] = (1.5, 1.25),
    step: float = 4.0,
    origin: tuple[float, float, float] = (-12.0, -15.0, -10.0),
    slope: float = 2.0,
    functional_groups: bool = True,
    field: Field = linear_field,
) -> Dataset:
    """Enhanced MR (multi-frame), axial, T2 (AcquisitionContrast), frames in reverse spatial order."""
    from pydicom.uid import EnhancedMRImageStorage

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.PatientID, ds.PatientName = patient_id, "Doe^Jane"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.SeriesNumber = 11
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T2", "NONE"]
    ds.AcquisitionContrast = "T2"
    ds.NumberOfFrames = n_frames
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    frames = []
    per_frame = []
    jj, ii = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    for k in reversed(range(n_frames)):
        ipp = np.asarray(origin) + np.array([0.0, 0.0, k * step])
        pts = (
            ipp
            + ii[..., None] * spacing[1] * np.array([1.0, 0, 0])
            + jj[..., None] * spacing[0] * np.array([0, 1.0, 0])
        )
        frames.append(np.round(field(pts) / slope).astype(np.uint16))
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in ipp]
        item.PlanePositionSequence = Sequence([pos])
        content = Dataset()
        content.InStackPositionNumber = k + 1
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    if functional_groups:
        shared = Dataset()
        ori, meas, xform, timing, echo = Dataset(), Dataset(), Dataset(), Dataset(), Dataset()
        ori.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        meas.PixelSpacing, meas.SliceThickness = list(spacing), step
        xform.RescaleSlope, xform.RescaleIntercept, xform.RescaleType = slope, 0, "US"
        timing.RepetitionTime = 4200.0
        echo.EffectiveEchoTime = 105.0
        shared.PlaneOrientationSequence = Sequence([ori])
        shared.PixelMeasuresSequence = Sequence([meas])
        shared.PixelValueTransformationSequence = Sequence([xform])
        shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
        shared.MREchoSequence = Sequence([echo])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(frames).tobytes()
    _save(ds, path, EnhancedMRImageStorage)
    return ds
