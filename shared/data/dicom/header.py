"""InstanceHeader: what ingestion needs from one DICOM instance (or one frame of a multi-frame one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass(frozen=True)
class InstanceHeader:
    """Plain values only (JSON round-trip for the index cache). Missing tags are None / ""."""

    path: str  # relative to the site folder, POSIX separators
    size: int
    mtime_ns: int
    sop_class: str
    modality: str
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    frame_of_ref: str
    transfer_syntax: str
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    scan_options: tuple[str, ...] = ()
    acquisition_type: str = ""
    tr: float | None = None
    te: float | None = None
    ti: float | None = None
    contrast_agent: str | None = None  # None: tag absent; "": present but empty
    acquisition_contrast: str = ""  # Enhanced MR (T1, T2, PROTON_DENSITY, MIXED...)
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    echo_number: int | None = None
    temporal_position: int | None = None
    acquisition_time: float | None = None  # seconds since midnight
    series_time: float | None = None
    iop: tuple[float, ...] | None = None  # 6 direction cosines
    ipp: tuple[float, ...] | None = None  # 3 mm
    pixel_spacing: tuple[float, ...] | None = None  # (row spacing, column spacing) mm
    slice_thickness: float | None = None
    spacing_between: float | None = None
    rows: int = 0
    columns: int = 0
    frame: int = -1  # frame index for multi-frame instances, -1 for single-frame
    n_frames: int = 1
    has_pixels: bool = True
    rescale_slope: float | None = None  # per-frame values of Enhanced MR only
    rescale_intercept: float | None = None

    @property
    def is_mr_image(self) -> bool:
        return self.sop_class in (MR_IMAGE, ENHANCED_MR) or (self.modality == "MR" and self.rows > 0)

    @property
    def study_key(self) -> str:
        return self.study_uid or self.frame_of_ref or "no-study"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InstanceHeader:
        kw = {}
        for f in fields(cls):
            v = d.get(f.name)
            if isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)
