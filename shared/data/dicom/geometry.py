"""Slice geometry: sort by position along the slice normal, check spacing, build the voxel <-> LPS mapping.

Conventions (DICOM PS3.3 C.7.6.2): IOP[0:3] is the direction of increasing column index i (along a
row), IOP[3:6] the direction of increasing row index j; PixelSpacing = (row spacing dr, column
spacing dc). A voxel (k, j, i) sits at ``IPP_k + i*dc*IOP[0:3] + j*dr*IOP[3:6]`` in patient LPS mm.
Slices are sorted by d = n . IPP with n = IOP[0:3] x IOP[3:6], never by InstanceNumber or SliceLocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data.dicom.header import InstanceHeader
from shared.errors import DicomError


@dataclass(frozen=True)
class VolumeGeometry:
    """Grid of a (Z, H, W) volume. ``positions``: (Z,) increasing d = n . IPP of each slice, mm."""

    origin: tuple[float, float, float]  # IPP of slice 0
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    pixel_spacing: tuple[float, float]  # (dr, dc)
    positions: tuple[float, ...]
    rows: int
    columns: int
    slice_thickness: float | None = None
    spacing: float | None = None  # nominal slice step when known (gaps are multiples of it)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))
        return n / np.linalg.norm(n)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.positions), self.rows, self.columns)

    @property
    def slice_spacing(self) -> float:
        if self.spacing:
            return float(self.spacing)
        if len(self.positions) < 2:
            return float(self.slice_thickness or 1.0)
        return float(np.median(np.diff(self.positions)))

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.slice_spacing, float(self.pixel_spacing[0]), float(self.pixel_spacing[1]))

    def is_uniform(self, tol: float = 0.01) -> bool:
        if len(self.positions) < 2:
            return True
        d = np.diff(self.positions)
        return bool(np.all(np.abs(d - self.slice_spacing) <= tol * max(self.slice_spacing, 1e-6)))

    def uniform(self) -> VolumeGeometry:
        """Same plane and extent, slices at regular median spacing (gaps filled by interpolation later)."""
        if self.is_uniform():
            return self
        sp = self.slice_spacing
        p0, p1 = self.positions[0], self.positions[-1]
        n = int(round((p1 - p0) / sp)) + 1
        return VolumeGeometry(
            self.origin, self.row_dir, self.col_dir, self.pixel_spacing,
            tuple(float(p0 + k * sp) for k in range(n)), self.rows, self.columns, self.slice_thickness, sp,
        )  # fmt: skip

    def affine(self) -> np.ndarray:
        """4x4 matrix mapping (k, j, i, 1) to LPS mm for a uniform grid."""
        a = np.eye(4)
        dr, dc = self.pixel_spacing
        a[:3, 0] = self.normal * self.slice_spacing
        a[:3, 1] = np.asarray(self.col_dir) * dr
        a[:3, 2] = np.asarray(self.row_dir) * dc
        a[:3, 3] = self.origin
        return a

    def world(self) -> np.ndarray:
        """LPS coordinates of every voxel centre, (Z, H, W, 3) float64."""
        z, h, w = self.shape
        dr, dc = self.pixel_spacing
        o = np.asarray(self.origin)
        pos = np.asarray(self.positions) - self.positions[0]
        slice_o = o[None, :] + pos[:, None] * self.normal[None, :]  # (Z, 3)
        jj = np.arange(h)[:, None] * dr * np.asarray(self.col_dir)[None, :]  # (H, 3)
        ii = np.arange(w)[:, None] * dc * np.asarray(self.row_dir)[None, :]  # (W, 3)
        return slice_o[:, None, None, :] + jj[None, :, None, :] + ii[None, None, :, :]

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS points (..., 3) -> fractional (k, j, i) (..., 3); k linearly extrapolated off the ends."""
        dr, dc = self.pixel_spacing
        rel = points - np.asarray(self.origin)
        i = rel @ np.asarray(self.row_dir) / dc
        j = rel @ np.asarray(self.col_dir) / dr
        d = points @ self.normal
        pos = np.asarray(self.positions)
        if len(pos) == 1:
            k = (d - pos[0]) / self.slice_spacing
        else:
            k = np.interp(d, pos, np.arange(len(pos), dtype=float))
            sp = self.slice_spacing
            k = np.where(d < pos[0], (d - pos[0]) / sp, k)
            k = np.where(d > pos[-1], len(pos) - 1 + (d - pos[-1]) / sp, k)
        return np.stack([k, j, i], axis=-1)

    def describe(self) -> str:
        z, h, w = self.shape
        dz, dr, dc = self.spacing_zyx
        thk = f" thk {self.slice_thickness:g}" if self.slice_thickness else ""
        return f"{dc:.2f}x{dr:.2f}x{dz:.2f}mm {w}x{h}x{z}{thk}"


@dataclass
class GeometryCheck:
    instances: list[InstanceHeader]  # kept, sorted by position
    geometry: VolumeGeometry
    problems: list[tuple[str, str, str]]  # (code, file, message), all warnings


def _normal(iop: tuple[float, ...]) -> np.ndarray:
    n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    return n / max(float(np.linalg.norm(n)), 1e-12)


def geometry_fault(h: InstanceHeader) -> str:
    """Why the geometry values of ``h`` are unusable ('' when the present ones are valid).

    Valid: finite ImagePositionPatient, two positive finite PixelSpacing values, and an
    ImageOrientationPatient made of two orthogonal unit vectors (tolerance 0.01, as scanners round).
    """
    faults = []
    if h.ipp is not None and not np.all(np.isfinite(h.ipp)):
        faults.append(f"ImagePositionPatient {_fmt(h.ipp)} is not finite")
    if h.pixel_spacing is not None and not (
        np.all(np.isfinite(h.pixel_spacing)) and min(h.pixel_spacing) > 0
    ):
        faults.append(f"PixelSpacing {_fmt(h.pixel_spacing)}; expected two positive numbers (mm)")
    if h.iop is not None:
        row, col = np.asarray(h.iop[:3], dtype=float), np.asarray(h.iop[3:], dtype=float)
        ok = (
            np.all(np.isfinite(h.iop))
            and abs(np.linalg.norm(row) - 1) <= 0.01
            and abs(np.linalg.norm(col) - 1) <= 0.01
            and abs(float(row @ col)) <= 0.01
        )
        if not ok:
            faults.append(f"ImageOrientationPatient {_fmt(h.iop)} is not two orthogonal unit vectors")
    return "; ".join(faults)


def _fmt(values: tuple[float, ...]) -> str:
    return "\\".join(f"{v:g}" for v in values)


def _resent_slices(
    instances: list[InstanceHeader], normal: np.ndarray, tol: float
) -> tuple[set[str], list[tuple[str, str, str]]]:
    """Files whose SOPInstanceUID also appears at another position of the series (a re-sent or
    mis-merged slice): every copy is dropped, since nothing tells which position is right."""
    by_uid: dict[str, list[InstanceHeader]] = {}
    for h in instances:
        if h.sop_uid and h.frame < 0:  # frames of one multi-frame instance share its UID
            by_uid.setdefault(h.sop_uid, []).append(h)
    drop: set[str] = set()
    problems: list[tuple[str, str, str]] = []
    for copies in by_uid.values():
        d = [float(normal @ np.asarray(h.ipp)) for h in copies]
        if len(copies) < 2 or max(d) - min(d) <= tol:
            continue
        where = ", ".join(f"{h.path} at {dh:.2f} mm" for h, dh in zip(copies, d, strict=True))
        for h in copies:
            drop.add(h.path)
            problems.append(("duplicate_sop_uid", h.path, f"one SOPInstanceUID at {len(copies)} positions "
                             f"({where}): a re-sent or mis-merged slice; every copy dropped. Remove the wrong "
                             "file and validate again."))  # fmt: skip
    return drop, problems


def check_geometry(
    instances: list[InstanceHeader], gap_factor: float = 1.5, min_slices: int = 3
) -> GeometryCheck:
    """Sort slices along the normal, drop duplicates and slices without geometry, detect gaps.

    Raises:
        DicomError: no slice with complete geometry, or fewer than ``min_slices`` left.
    """
    problems: list[tuple[str, str, str]] = []
    first_path = instances[0].path if instances else "?"
    complete, faults = [], []
    for h in instances:
        fault = geometry_fault(h)
        if fault:
            faults.append(fault)
            problems.append(("invalid_geometry", h.path, f"{fault}; slice dropped"))
            continue
        absent = [k for k, v in (("ImagePositionPatient", h.ipp), ("ImageOrientationPatient", h.iop),
                                 ("PixelSpacing", h.pixel_spacing)) if v is None]  # fmt: skip
        if absent:
            problems.append(("missing_geometry", h.path, f"slice lacks {', '.join(absent)} (absent or "
                             "unreadable); slice dropped"))  # fmt: skip
            continue
        complete.append(h)
    if not complete and faults:
        raise DicomError(
            f"{first_path}: invalid geometry on all {len(instances)} slices ({faults[0]}); the series cannot be "
            "placed in space and is skipped. Check the export (anonymiser or converter settings).",
            code="invalid_geometry",
        )
    if not complete:
        raise DicomError(
            f"{first_path}: none of the {len(instances)} slices has ImagePositionPatient, ImageOrientationPatient "
            "and PixelSpacing; expected all three on every slice. The series cannot be placed in space and is skipped.",
            code="missing_geometry",
        )
    n = _normal(complete[0].iop)
    probe = [float(n @ np.asarray(h.ipp)) for h in complete]
    probe_steps = np.diff(np.sort(probe))
    probe_typical = float(np.median(probe_steps[probe_steps > 1e-3])) if np.any(probe_steps > 1e-3) else 1.0
    resent, resent_problems = _resent_slices(complete, n, max(1e-3, 0.01 * probe_typical))
    problems += resent_problems
    complete = [h for h in complete if h.path not in resent]
    if not complete:
        raise DicomError(f"{first_path}: no slice left after dropping re-sent slices; the series is skipped.",
                         code="duplicate_sop_uid")  # fmt: skip
    keyed = sorted(
        complete,
        key=lambda h: (
            float(n @ np.asarray(h.ipp)),
            h.acquisition_number or 0,
            h.instance_number or 0,
            h.path,
        ),
    )
    d = np.array([float(n @ np.asarray(h.ipp)) for h in keyed])
    steps = np.diff(d)
    typical = float(np.median(steps[steps > 1e-3])) if np.any(steps > 1e-3) else 1.0
    kept: list[InstanceHeader] = [keyed[0]]
    kept_d = [d[0]]
    for h, dh in zip(keyed[1:], d[1:], strict=True):
        if abs(dh - kept_d[-1]) <= max(1e-3, 0.01 * typical):
            other = kept[-1]
            why = "same SOPInstanceUID (copied file)" if h.sop_uid and h.sop_uid == other.sop_uid else (
                f"AcquisitionNumber {other.acquisition_number} and {h.acquisition_number}"
                if h.acquisition_number != other.acquisition_number else "same position")  # fmt: skip
            problems.append(
                (
                    "duplicate_slice",
                    h.path,
                    f"duplicate slice at position {dh:.2f} mm ({why}); kept {other.path}",
                )
            )
            continue
        kept.append(h)
        kept_d.append(dh)
    if len(kept) < min_slices:
        raise DicomError(
            f"{first_path}: only {len(kept)} distinct slice position(s) after removing duplicates; expected at least "
            f"{min_slices}. The series is skipped.",
            code="too_few_slices",
        )
    kd = np.asarray(kept_d)
    steps = np.diff(kd)
    sp = float(np.median(steps))
    s_min = float(steps.min())
    if s_min > 1e-3 and np.all(np.abs(steps / s_min - np.round(steps / s_min)) < 0.05):
        sp = s_min  # every step is a multiple of the smallest one: gaps are missing slices
    for k, st in enumerate(steps):
        if st > gap_factor * sp:
            problems.append(
                (
                    "slice_gap",
                    kept[k + 1].path,
                    f"gap of {st:.2f} mm between slices at {kd[k]:.2f} and {kd[k + 1]:.2f} mm (median spacing "
                    f"{sp:.2f} mm): about {int(round(st / sp)) - 1} slice(s) missing; filled by interpolation",
                )
            )
    irregular = [s for s in steps if abs(s - sp) > 0.05 * sp and s <= gap_factor * sp]
    if irregular:
        problems.append(
            (
                "irregular_spacing",
                kept[0].path,
                f"{len(irregular)} slice step(s) differ from the median {sp:.2f} mm by over 5%",
            )
        )
    f = kept[0]
    geom = VolumeGeometry(
        origin=tuple(float(x) for x in f.ipp),
        row_dir=tuple(float(x) for x in f.iop[:3]),
        col_dir=tuple(float(x) for x in f.iop[3:]),
        pixel_spacing=(float(f.pixel_spacing[0]), float(f.pixel_spacing[1])),
        positions=tuple(float(x) for x in kd),
        rows=f.rows,
        columns=f.columns,
        slice_thickness=f.slice_thickness,
        spacing=sp,
    )
    return GeometryCheck(kept, geom, problems)
