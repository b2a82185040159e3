"""RTSTRUCT: ROI selection by name regex and even-odd rasterisation of CLOSED_PLANAR contours.

Contours (ContourData, LPS mm) are placed on slices through ContourImageSequence when it references
a slice of the series, else by projecting the contour on the slice normal and taking the nearest slice
within half the slice spacing. All contours of one plane are filled together with the even-odd rule,
so a contour inside another one is a hole and separate contours are islands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from shared.data.dicom.geometry import VolumeGeometry
from shared.data.dicom.values import text


@dataclass(frozen=True)
class Contour:
    geometric_type: str
    points: np.ndarray  # (N, 3) LPS mm
    referenced_sops: tuple[str, ...] = ()


@dataclass
class Roi:
    number: int
    name: str
    interpreted_type: str = ""
    contours: list[Contour] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # why each unusable ContourSequence item was skipped

    @property
    def closed_planar(self) -> list[Contour]:
        return [c for c in self.contours if c.geometric_type == "CLOSED_PLANAR" and len(c.points) >= 3]


@dataclass
class StructureSet:
    frame_of_ref: str
    rois: list[Roi]


def _contour_points(item: Dataset) -> tuple[np.ndarray, str]:
    """(points (N, 3), '') or (empty, why the ContourData is unusable)."""
    try:
        raw = item.ContourData
        values = [
            float(v) for v in (raw if isinstance(raw, list | tuple) or hasattr(raw, "__len__") else [raw])
        ]
    except AttributeError:
        return np.empty((0, 3)), "no ContourData"
    except (TypeError, ValueError) as err:
        return np.empty((0, 3)), f"ContourData has a non-numeric value ({str(err)[:60]})"
    if len(values) % 3:
        return np.empty((0, 3)), f"ContourData has {len(values)} values, not x\\y\\z triplets"
    pts = np.asarray(values, dtype=float).reshape(-1, 3)
    if not np.all(np.isfinite(pts)):
        return np.empty((0, 3)), "ContourData has a non-finite value"
    geometric = text(item, "ContourGeometricType").upper()
    if geometric == "CLOSED_PLANAR" and len(pts) < 3:
        return np.empty((0, 3)), f"CLOSED_PLANAR contour with {len(pts)} point(s); expected at least 3"
    return pts, ""


def parse_rtstruct(ds: Dataset) -> StructureSet:
    """ROIs with names, RT interpreted types and contours (malformed contour items are skipped)."""
    rois: dict[int, Roi] = {}
    for item in ds.get("StructureSetROISequence", []) or []:
        try:
            num = int(item.ROINumber)
        except Exception:
            continue
        rois[num] = Roi(num, text(item, "ROIName"))
    for obs in ds.get("RTROIObservationsSequence", []) or []:
        try:
            num = int(obs.ReferencedROINumber)
        except Exception:
            continue
        if num in rois:
            rois[num].interpreted_type = text(obs, "RTROIInterpretedType").upper()
    for rc in ds.get("ROIContourSequence", []) or []:
        try:
            num = int(rc.ReferencedROINumber)
        except Exception:
            continue
        roi = rois.setdefault(num, Roi(num, f"ROI {num}"))
        for n, c in enumerate(rc.get("ContourSequence", []) or [], start=1):
            pts, fault = _contour_points(c)
            if fault:
                roi.malformed.append(f"contour {n}: {fault}")
                continue
            refs = tuple(text(r, "ReferencedSOPInstanceUID") for r in (c.get("ContourImageSequence") or []))
            roi.contours.append(Contour(text(c, "ContourGeometricType").upper(), pts, refs))
    frame = text(ds, "FrameOfReferenceUID")
    if not frame:
        refs = ds.get("ReferencedFrameOfReferenceSequence") or []
        frame = text(refs[0], "FrameOfReferenceUID") if refs else ""
    return StructureSet(frame, [rois[k] for k in sorted(rois)])


def matching_rois(rois: list[Roi], patterns: tuple[str, ...]) -> list[Roi]:
    """ROIs whose name matches one of the tumour regexes (case-insensitive)."""
    rx = [re.compile(p, re.IGNORECASE) for p in patterns]
    return [r for r in rois if any(x.search(r.name.strip()) for x in rx)]


def select_roi(rois: list[Roi], patterns: tuple[str, ...]) -> tuple[Roi | None, str]:
    """The primary tumour ROI: name matches one regex (case-insensitive), has closed contours.

    Several matches: prefer RTROIInterpretedType GTV, then most contours, then lowest ROINumber.
    Returns (roi or None, note for the report).
    """
    hits = matching_rois(rois, patterns)
    usable = [r for r in hits if r.closed_planar]
    if not usable:
        names = ", ".join(f"{r.name!r} ({r.interpreted_type or '?'})" for r in rois) or "none"
        bad = [f"{r.name!r}: {'; '.join(r.malformed[:3])}" for r in hits if r.malformed]
        if bad:
            return None, f"ROI(s) {[r.name for r in hits]} match but no contour is usable: {'; '.join(bad)}"
        if hits:
            kinds = sorted({c.geometric_type or "no type" for r in hits for c in r.contours}) or [
                "no contour"
            ]
            return (
                None,
                f"ROI(s) {[r.name for r in hits]} match but have no CLOSED_PLANAR contour (found: {', '.join(kinds)})",
            )
        return None, f"no ROI name matches the tumour patterns {list(patterns)}; ROIs found: {names}"
    usable.sort(key=lambda r: (r.interpreted_type != "GTV", -len(r.closed_planar), r.number))
    note = ""
    if len(usable) > 1:
        note = f"several tumour ROIs {[r.name for r in usable]}; used {usable[0].name!r}"
    return usable[0], note


def _fill_even_odd(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Scanline even-odd fill of polygons given in (i, j) pixel coordinates; pixel centres at integers."""
    out = np.zeros((h, w), dtype=bool)
    edges = []
    for p in polys:
        q = np.roll(p, -1, axis=0)
        edges.append(np.concatenate([p, q], axis=1))
    if not edges:
        return out
    e = np.concatenate(edges)  # (E, 4): i0, j0, i1, j1
    e = e[e[:, 1] != e[:, 3]]  # horizontal edges never cross a scanline
    if len(e) == 0:
        return out
    j_lo, j_hi = np.minimum(e[:, 1], e[:, 3]), np.maximum(e[:, 1], e[:, 3])
    for j in range(max(0, int(np.floor(j_lo.min()))), min(h, int(np.ceil(j_hi.max())) + 1)):
        sel = (j_lo <= j) & (j < j_hi)
        if not np.any(sel):
            continue
        s = e[sel]
        x = s[:, 0] + (j - s[:, 1]) * (s[:, 2] - s[:, 0]) / (s[:, 3] - s[:, 1])
        x.sort()
        for a, b in zip(x[0::2], x[1::2], strict=False):
            lo, hi = max(0, int(np.ceil(a))), min(w, int(np.ceil(b)))
            if hi > lo:
                out[j, lo:hi] ^= True
    return out


def rasterise(
    contours: list[Contour], geom: VolumeGeometry, sop_to_slice: dict[str, int] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Fill CLOSED_PLANAR contours on ``geom``'s grid.

    Returns (mask uint8 (Z, H, W) with 1 inside, messages about contours matching no slice).
    """
    z, h, w = geom.shape
    mask = np.zeros((z, h, w), dtype=np.uint8)
    normal = geom.normal
    pos = np.asarray(geom.positions)
    half = 0.5 * geom.slice_spacing
    per_slice: dict[int, list[np.ndarray]] = {}
    problems: list[str] = []
    for c in contours:
        if c.geometric_type != "CLOSED_PLANAR" or len(c.points) < 3:
            continue
        d = c.points @ normal
        k = None
        for ref in c.referenced_sops:
            if sop_to_slice and ref in sop_to_slice:
                k = sop_to_slice[ref]
                break
        if np.ptp(d) > max(half, 0.5):
            problems.append(
                f"contour of {len(c.points)} points is not parallel to the image planes (spans {np.ptp(d):.1f} mm)"
            )
            continue
        if k is None:
            dm = float(d.mean())
            k = int(np.argmin(np.abs(pos - dm)))
            if abs(pos[k] - dm) > half:
                problems.append(
                    f"contour at {dm:.2f} mm along the slice normal matches no slice (slices {pos[0]:.2f}..{pos[-1]:.2f} mm, "
                    f"tolerance {half:.2f} mm)"
                )
                continue
        idx = geom.to_index(c.points)  # (N, 3) k, j, i
        per_slice.setdefault(k, []).append(idx[:, [2, 1]])
    for k, polys in per_slice.items():
        mask[k] = _fill_even_odd(polys, h, w)
    return mask, problems
