"""Header-only index of a site folder: any tree, any file names, one bad file never stops the rest.

Every regular file is tried with ``pydicom.dcmread(stop_before_pixels=True)``; files without the
DICOM preamble are retried with ``force=True`` (pydicom's ``rtstruct.dcm`` has no file meta) and kept
only when they look like DICOM (SOPClassUID or Modality present). Non-DICOM, unreadable and
truncated-header files become warnings. Results can be reused across runs for unchanged files
(same size and mtime): see ``previous`` in :func:`index_tree`.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from shared.data.dicom.enhanced import expand_frames
from shared.data.dicom.header import ENHANCED_MR, InstanceHeader
from shared.data.dicom.values import dicom_time, floats, integer, multi, number, optional_text, text
from shared.data.report import Problem
from shared.errors import DicomError

log = logging.getLogger(__name__)

#: Files of the site contract that are not DICOM and are never reported as such.
SITE_FILES = {"labels.csv", "site_mapping.json", "readme.txt", "readme.md"}
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class FileEntry:
    size: int
    mtime_ns: int
    headers: list[InstanceHeader] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "headers": [h.to_json() for h in self.headers],
            "problems": [p.__dict__ for p in self.problems],
        }

    @classmethod
    def from_json(cls, d: dict) -> FileEntry:
        return cls(
            d["size"],
            d["mtime_ns"],
            [InstanceHeader.from_json(h) for h in d["headers"]],
            [Problem(**p) for p in d["problems"]],
        )


def list_files(site_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every regular file under ``site_dir`` (sorted; hidden files and folders and ``exclude`` skipped)."""
    out: list[Path] = []
    for root, dirs, files in os.walk(site_dir):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (exclude is None or Path(root, d) != exclude)
        )
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = Path(root) / name
            if p.is_file():
                out.append(p)
    return out


def read_header(path: Path, rel: str, size: int, mtime_ns: int) -> FileEntry:
    """Index one file. Never raises: problems are returned in the entry."""
    entry = FileEntry(size, mtime_ns)
    with warnings.catch_warnings():  # pydicom warns on every odd forced read; problems are reported below
        warnings.simplefilter("ignore")
        return _read_header(path, rel, entry)


def _read_header(path: Path, rel: str, entry: FileEntry) -> FileEntry:
    size, mtime_ns = entry.size, entry.mtime_ns
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds and "Modality" not in ds:
                entry.problems.append(
                    Problem(
                        "warning",
                        "not_dicom",
                        rel,
                        "not a DICOM file (no DICM prefix, no DICOM tags); ignored",
                    )
                )
                return entry
    except Exception as err:  # truncated headers, garbage: report, continue
        entry.problems.append(
            Problem(
                "warning",
                "unreadable",
                rel,
                f"cannot read DICOM header ({type(err).__name__}: {str(err)[:160]}); file ignored. "
                "Re-export it if it belongs to a needed series.",
            )
        )
        return entry
    short = _short_pixel_data(ds, os.path.getsize(path))
    if short:
        entry.problems.append(
            Problem("warning", "bad_pixels", rel, f"truncated pixel data: {short}; file ignored")
        )
        return entry
    incomplete = _incomplete(ds)
    if incomplete:
        entry.problems.append(
            Problem(
                "warning",
                "unreadable",
                rel,
                f"DICOM header incomplete: {incomplete} (file truncated?); file ignored",
            )
        )
        return entry
    try:
        entry.headers = _headers(ds, rel, size, mtime_ns)
    except DicomError as err:
        entry.problems.append(Problem("warning", "enhanced_no_geometry", rel, str(err)))
    except Exception as err:
        entry.problems.append(
            Problem(
                "warning",
                "unreadable",
                rel,
                f"malformed DICOM header ({type(err).__name__}: {str(err)[:160]})",
            )
        )
    return entry


UNCOMPRESSED = {"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _short_pixel_data(ds: pydicom.Dataset, size: int) -> str:
    """Cheap truncation check for uncompressed images: the file must hold at least the pixel bytes."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in UNCOMPRESSED or "BitsAllocated" not in ds or "Rows" not in ds or "Columns" not in ds:
        return ""
    n = (integer(ds, "Rows") or 0) * (integer(ds, "Columns") or 0) * (integer(ds, "SamplesPerPixel") or 1)
    n *= integer(ds, "NumberOfFrames") or 1
    bits = integer(ds, "BitsAllocated") or 0
    expected = (n * bits + 7) // 8
    if expected and size < expected:
        return f"file has {size} bytes, the pixel data alone needs {expected}"
    return ""


def _incomplete(ds: pydicom.Dataset) -> str:
    """What a truncated header lacks ('' when complete enough). pydicom reads up to EOF without error."""
    if "SOPClassUID" not in ds and "Modality" not in ds:
        return "no SOPClassUID and no Modality"
    modality = text(ds, "Modality").upper()
    if modality == "MR" or "MR Image" in getattr(ds.get("SOPClassUID"), "name", ""):
        missing = [k for k in ("Rows", "Columns", "BitsAllocated") if k not in ds]
        if missing:
            return f"MR image without {', '.join(missing)}"
    return ""


def _headers(ds: pydicom.Dataset, rel: str, size: int, mtime_ns: int) -> list[InstanceHeader]:
    meta = getattr(ds, "file_meta", None)
    ts = ""
    if meta is not None and "TransferSyntaxUID" in meta:
        ts = str(meta.TransferSyntaxUID)
    sop_class = text(ds, "SOPClassUID")
    if sop_class == DICOMDIR_CLASS:
        return []
    spacing = floats(ds, "PixelSpacing", 2)
    h = InstanceHeader(
        path=rel,
        size=size,
        mtime_ns=mtime_ns,
        sop_class=sop_class,
        modality=text(ds, "Modality").upper(),
        patient_id=text(ds, "PatientID"),
        patient_name=text(ds, "PatientName"),
        study_uid=text(ds, "StudyInstanceUID"),
        series_uid=text(ds, "SeriesInstanceUID"),
        sop_uid=text(ds, "SOPInstanceUID"),
        frame_of_ref=text(ds, "FrameOfReferenceUID"),
        transfer_syntax=ts,
        image_type=multi(ds, "ImageType"),
        scanning_sequence=multi(ds, "ScanningSequence"),
        sequence_variant=multi(ds, "SequenceVariant"),
        scan_options=multi(ds, "ScanOptions"),
        acquisition_type=text(ds, "MRAcquisitionType").upper(),
        tr=number(ds, "RepetitionTime"),
        te=number(ds, "EchoTime"),
        ti=number(ds, "InversionTime"),
        contrast_agent=optional_text(ds, "ContrastBolusAgent"),
        acquisition_contrast=text(ds, "AcquisitionContrast").upper(),
        series_description=text(ds, "SeriesDescription"),
        protocol_name=text(ds, "ProtocolName"),
        sequence_name=text(ds, "SequenceName"),
        series_number=integer(ds, "SeriesNumber"),
        instance_number=integer(ds, "InstanceNumber"),
        acquisition_number=integer(ds, "AcquisitionNumber"),
        echo_number=integer(ds, "EchoNumbers"),
        temporal_position=integer(ds, "TemporalPositionIdentifier"),
        acquisition_time=dicom_time(text(ds, "AcquisitionTime")) or dicom_time(text(ds, "ContentTime")),
        series_time=dicom_time(text(ds, "SeriesTime")),
        iop=floats(ds, "ImageOrientationPatient", 6),
        ipp=floats(ds, "ImagePositionPatient", 3),
        pixel_spacing=spacing,
        slice_thickness=number(ds, "SliceThickness"),
        spacing_between=number(ds, "SpacingBetweenSlices"),
        rows=integer(ds, "Rows") or 0,
        columns=integer(ds, "Columns") or 0,
        n_frames=integer(ds, "NumberOfFrames") or 1,
        # stop_before_pixels drops PixelData; BitsAllocated is a reliable sign that an image was meant
        has_pixels="BitsAllocated" in ds,
    )
    is_multiframe_mr = h.modality == "MR" and (sop_class == ENHANCED_MR or h.n_frames > 1)
    if is_multiframe_mr:
        return expand_frames(ds, h)
    return [h]


def index_tree(
    site_dir: Path,
    previous: dict[str, FileEntry] | None = None,
    progress: bool = False,
    exclude: Path | None = None,
) -> dict[str, FileEntry]:
    """Index every file under ``site_dir``; reuse ``previous`` entries whose size and mtime match.

    Returns relative POSIX path -> FileEntry (headers and problems of that file).
    """
    previous = previous or {}
    out: dict[str, FileEntry] = {}
    files = list_files(site_dir, exclude)
    reused = 0
    for path in tqdm(files, desc="index", unit="file", disable=not progress):
        rel = path.relative_to(site_dir).as_posix()
        if rel.lower() in SITE_FILES:
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        old = previous.get(rel)
        if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            out[rel] = old
            reused += 1
            continue
        out[rel] = read_header(path, rel, st.st_size, st.st_mtime_ns)
    log.info("indexed %d files (%d unchanged since the cached index)", len(out), reused)
    return out
