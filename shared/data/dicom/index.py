"""Header-only index of a site folder: any tree, any file names, one bad file never stops the rest.

Every regular file is read with ``pydicom.dcmread(defer_size=...)`` (large values such as pixel data
skipped, their offset and length kept); files without the DICOM preamble and file meta (bare datasets,
e.g. pydicom's ``rtstruct.dcm``) are retried with ``force=True`` and kept only when they look like
DICOM (SOPClassUID or Modality present); their transfer syntax is inferred from the encoding pydicom
detected (see :func:`shared.data.dicom.pixels.transfer_syntax`). A file is "truncated" only when an
element's declared length runs past the end of the file (exact, no size heuristics). DICOMDIR files
are skipped with a note. Symbolic links to folders are followed once per real folder. Results can be reused across runs for unchanged files
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
from shared.data.dicom.pixels import transfer_syntax
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
    patient_id: str = ""  # PatientID of the header when one could be read (problems name the patient)

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "headers": [h.to_json() for h in self.headers],
            "problems": [p.__dict__ for p in self.problems],
            "patient_id": self.patient_id,
        }

    @classmethod
    def from_json(cls, d: dict) -> FileEntry:
        return cls(
            d["size"],
            d["mtime_ns"],
            [InstanceHeader.from_json(h) for h in d["headers"]],
            [Problem(**p) for p in d["problems"]],
            d.get("patient_id", ""),
        )


def list_files(site_dir: Path, exclude: Path | None = None) -> tuple[list[Path], list[Problem]]:
    """Every regular file under ``site_dir`` (sorted; hidden files and folders and ``exclude`` skipped).

    Symbolic links to folders are followed (exports are often linked in from another disk), each real
    folder once (by device and inode): a link to a folder that is read anyway (a folder of the site
    itself, a loop, a second link to the same export) is reported and not followed, as is a link whose
    target does not exist. Paths stay as seen from ``site_dir`` (through the link), so every reported
    path exists. Returns (files, problems).
    """
    out: list[Path] = []
    problems: list[Problem] = []

    def skipped(p: Path) -> bool:
        return p.name.startswith(".") or (exclude is not None and p == exclude)

    def key(st: os.stat_result) -> tuple[int, int]:
        return (st.st_dev, st.st_ino)

    def target(p: Path) -> str:
        try:
            return repr(os.readlink(p))
        except OSError:
            return "?"

    # every real folder of the site is read in place: a link to one of them is never followed
    in_site = {key(Path(root).stat()) for root, _, _ in _real_walk(site_dir, skipped)}
    walked: set[tuple[int, int]] = set()

    def walk(folder: Path) -> None:
        try:
            walked.add(key(folder.stat()))
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            where = folder.relative_to(site_dir).as_posix()
            problems.append(Problem("warning", "unreadable", where, f"cannot list folder ({err.strerror})"))
            return
        for e in children:
            p = Path(e.path)
            rel = p.relative_to(site_dir).as_posix()
            if skipped(p):
                continue
            if e.is_symlink() and not p.exists():
                problems.append(Problem("warning", "broken_link", rel, f"symbolic link to {target(p)}, which "
                                        "does not exist (or loops onto itself); not followed"))  # fmt: skip
                continue
            if e.is_dir(follow_symlinks=True):
                k = key(p.stat())
                if e.is_symlink() and (k in in_site or k in walked):
                    problems.append(Problem("warning", "link_not_followed", rel, f"symbolic link to {target(p)}, "
                                            "a folder read anyway (inside the site folder, a loop, or a second "
                                            "link to the same export); not followed"))  # fmt: skip
                    continue
                if k in walked:  # a real folder of a linked export, already read through another link
                    problems.append(Problem("warning", "link_not_followed", rel, "folder already read through "
                                            "another symbolic link; not read again"))  # fmt: skip
                    continue
                walk(p)
            elif e.is_file(follow_symlinks=True):
                out.append(p)

    walk(site_dir)
    return out, problems


def _real_walk(site_dir: Path, skipped):
    """os.walk without following links, pruning what :func:`list_files` skips."""
    for root, dirs, files in os.walk(site_dir):
        dirs[:] = [d for d in dirs if not skipped(Path(root, d))]
        yield root, dirs, files


def read_header(path: Path, rel: str, size: int, mtime_ns: int) -> FileEntry:
    """Index one file. Never raises: problems are returned in the entry."""
    entry = FileEntry(size, mtime_ns)
    with warnings.catch_warnings():  # pydicom warns on every odd forced read; problems are reported below
        warnings.simplefilter("ignore")
        return _read_header(path, rel, entry)


def _read(path: Path, force: bool) -> pydicom.Dataset:
    # defer_size: large values (pixel data) are skipped, not read, but their offset and length are kept,
    # which gives an exact truncation check (see _truncated)
    return pydicom.dcmread(path, defer_size=DEFER_BYTES, force=force)


def _read_header(path: Path, rel: str, entry: FileEntry) -> FileEntry:
    size, mtime_ns = entry.size, entry.mtime_ns
    try:
        try:
            ds = _read(path, force=False)
        except InvalidDicomError:
            # no "DICM" preamble: a bare dataset (old PACS, some anonymisers); pydicom peeks at the first
            # element to tell implicit from explicit VR
            ds = _read(path, force=True)
            if "SOPClassUID" not in ds and "Modality" not in ds:
                entry.problems.append(
                    Problem(
                        "warning",
                        "not_dicom",
                        rel,
                        "not a DICOM file (no DICM prefix, no SOPClassUID or Modality); ignored",
                    )
                )
                return entry
    except Exception as err:  # garbage that pydicom cannot parse: report, continue
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
    if len(ds) == 0 and _header_before_pixels(path):
        # pydicom drops the whole dataset when encapsulated pixel data (undefined length) reaches the end
        # of the file before its sequence delimiter: the header is there, the pixel data is cut
        entry.problems.append(Problem("warning", "bad_pixels", rel, "truncated pixel data: the file ends inside "
                                      "encapsulated pixel data (or a trailing sequence) before its closing "
                                      "delimiter; file ignored. Re-export it if it belongs to a needed series."))  # fmt: skip
        return entry
    entry.patient_id = text(ds, "PatientID")
    if _is_dicomdir(ds):
        entry.problems.append(
            Problem("info", "dicomdir", rel, "DICOMDIR (index of the export media): files are read directly")
        )
        return entry
    truncated = _truncated(ds, os.path.getsize(path))  # not `size`: callers may pass 0
    if truncated is not None:
        code, what = truncated
        entry.problems.append(Problem("warning", code, rel, f"{what}; file ignored. "
                                      "Re-export it if it belongs to a needed series."))  # fmt: skip
        return entry
    incomplete = _incomplete(ds)
    if incomplete:
        entry.problems.append(Problem(*incomplete[:2], rel, incomplete[2]))
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


DEFER_BYTES = 4096
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


def _is_dicomdir(ds: pydicom.Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    media = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return DICOMDIR_CLASS in (media, text(ds, "SOPClassUID")) or "DirectoryRecordSequence" in ds


def _header_before_pixels(path: Path) -> bool:
    try:
        return len(pydicom.dcmread(path, stop_before_pixels=True, force=True)) > 0
    except Exception:  # as unreadable without the pixels as with them
        return False


def _truncated(ds: pydicom.Dataset, size: int) -> tuple[str, str] | None:
    """Exact check: the last element read must end inside the file. (code, message) when it does not.

    pydicom reads up to the end of a cut file without error; the element it stopped in has a declared
    length running past the end. Elements of undefined length (sequences, encapsulated pixel data)
    cannot be checked this way; their decoding fails later, naming the file.
    """
    tags = list(ds.keys())
    if not tags:
        return "unreadable", "truncated header: no data element after the file meta"
    elem = ds.get_item(tags[-1])  # raw element: still knows where its value starts in the file
    tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF or tell + length <= size:
        return None
    declared = f"declares {length} bytes from offset {tell}, the file ends at {size}"
    if int(tags[-1]) in PIXEL_TAGS:
        return "bad_pixels", f"truncated pixel data ({declared})"
    return "unreadable", f"truncated header: element {tags[-1]} ({declared})"


def _incomplete(ds: pydicom.Dataset) -> tuple[str, str, str] | None:
    """(severity, code, message) when the dataset is not something ingestion can use, else None."""
    if "SOPClassUID" not in ds and "Modality" not in ds:
        return ("info", "not_image", "DICOM dataset without SOPClassUID or Modality (not an image or "
                "structure set); ignored")  # fmt: skip
    modality = text(ds, "Modality").upper()
    if modality == "MR" or "MR Image" in getattr(ds.get("SOPClassUID"), "name", ""):
        missing = [k for k in ("Rows", "Columns", "BitsAllocated") if k not in ds]
        if missing:
            return ("warning", "unreadable", f"MR image header without {', '.join(missing)}; file ignored. "
                    "Re-export it if it belongs to a needed series.")  # fmt: skip
    return None


def _headers(ds: pydicom.Dataset, rel: str, size: int, mtime_ns: int) -> list[InstanceHeader]:
    ts = transfer_syntax(ds)
    sop_class = text(ds, "SOPClassUID")
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
        has_pixels=any(t in ds for t in PIXEL_TAGS),
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
    files, walk_problems = list_files(site_dir, exclude)
    for (
        p
    ) in walk_problems:  # links not followed: reuse the cached entry so an unchanged index stays unchanged
        old = previous.get(p.file)
        out[p.file] = old if old is not None and old.problems == [p] else FileEntry(0, 0, problems=[p])
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
