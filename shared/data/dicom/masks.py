"""Tumour mask of one patient from its RTSTRUCT or SEG objects, on the patient's reference grid."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom

from shared.data.dicom.geometry import VolumeGeometry
from shared.data.dicom.header import RTSTRUCT_STORAGE, SEG_STORAGE, InstanceHeader
from shared.data.dicom.pixels import with_transfer_syntax
from shared.data.dicom.resample import resample_mask
from shared.data.dicom.rtstruct import matching_rois, parse_rtstruct, rasterise, select_roi
from shared.data.dicom.seg import Segmentation, parse_seg, segment_mask, select_segment
from shared.data.dicom.volumes import LoadedSeries
from shared.data.report import Problem
from shared.errors import DicomError


def is_rtstruct(h: InstanceHeader) -> bool:
    return h.sop_class == RTSTRUCT_STORAGE or h.modality == "RTSTRUCT"


def is_seg(h: InstanceHeader) -> bool:
    return h.sop_class == SEG_STORAGE or h.modality == "SEG"


def _contour_host(contours, loaded: list[LoadedSeries]) -> LoadedSeries:
    """Series the contours were drawn on: most referenced SOPs, else most planes matched by position."""
    refs = {r for c in contours for r in c.referenced_sops}
    by_refs = max(loaded, key=lambda s: len(refs & set(s.sop_to_slice)))
    if refs and refs & set(by_refs.sop_to_slice):
        return by_refs

    def plane_hits(s: LoadedSeries) -> int:
        g = s.geometry
        pos, half = np.asarray(g.positions), 0.5 * g.slice_spacing
        hits = 0
        for c in contours:
            d = c.points @ g.normal
            if np.ptp(d) <= max(half, 0.5) and np.min(np.abs(pos - d.mean())) <= half:
                hits += 1
        return hits

    return max(loaded, key=plane_hits)  # first max = reference series on ties


#: A mask that keeps less than this share of its volume when put on the reference grid is reported.
MIN_KEPT_VOLUME = 0.5


def _volume_ml(mask: np.ndarray, geom: VolumeGeometry) -> float:
    dz, dr, dc = geom.spacing_zyx
    return float(mask.sum()) * dz * dr * dc / 1000.0


def seg_volume_ml(seg: Segmentation, number: int) -> float:
    """Volume (ml) of one segment as stored in its frames."""
    frames = [f for f in seg.frames if f.segment == number]
    if not frames:
        return 0.0
    step = seg.spacing_between or 1.0
    if seg.spacing_between is None and len(frames) > 1:
        n = np.cross(np.asarray(frames[0].iop[:3]), np.asarray(frames[0].iop[3:]))
        d = np.sort([float(n @ np.asarray(f.ipp)) for f in frames])
        steps = np.diff(d)
        step = float(np.min(steps[steps > 1e-3])) if np.any(steps > 1e-3) else 1.0
    return sum(float(f.mask.sum()) * f.spacing[0] * f.spacing[1] * step for f in frames) / 1000.0


def _lost_on_resampling(source_ml: float, on_grid: np.ndarray, grid: VolumeGeometry) -> str:
    """'' when the mask kept its volume on the reference grid, else what was lost (for the report)."""
    kept_ml = _volume_ml(on_grid, grid)
    if source_ml <= 0 or kept_ml >= MIN_KEPT_VOLUME * source_ml:
        return ""
    if kept_ml == 0:
        return (f"{source_ml:.2f} ml drawn, nothing left on the reference grid (the contours lie outside the "
                "reference series, or the geometry of a series is wrong); no mask used")  # fmt: skip
    return (f"{source_ml:.2f} ml drawn, {kept_ml:.2f} ml left on the reference grid ({kept_ml / source_ml:.0%}): "
            "check that the contours lie inside the reference series")  # fmt: skip


def mask_from_objects(
    site_dir: Path,
    objects: list[InstanceHeader],
    loaded: list[LoadedSeries],
    reference: VolumeGeometry,
    patterns: tuple[str, ...],
    patient: str,
) -> tuple[np.ndarray | None, str, list[Problem]]:
    """First usable tumour mask among RTSTRUCT / SEG ``objects``.

    ``loaded``: the patient's loaded series, reference series first. Returns (uint8 (Z, H, W) on
    ``reference`` or None, source description, problems).
    """
    problems: list[Problem] = []
    for h in sorted(objects, key=lambda o: (not is_rtstruct(o), o.path)):
        try:
            with warnings.catch_warnings():  # pydicom warnings may quote element values (names)
                warnings.simplefilter("ignore")
                ds = with_transfer_syntax(pydicom.dcmread(site_dir / h.path, force=True))
        except Exception as err:
            problems.append(
                Problem("warning", "unreadable", h.path, f"cannot read ({type(err).__name__})", patient)
            )
            continue
        if is_rtstruct(h):
            ss = parse_rtstruct(ds)
            roi, note = select_roi(ss.rois, patterns)
            if roi is None:
                malformed = any(r.malformed for r in matching_rois(ss.rois, patterns))
                code = "malformed_contour" if malformed else "no_tumour_roi"
                problems.append(Problem("warning", code, h.path, note, patient))
                continue
            if note:
                problems.append(Problem("warning", "several_tumour_rois", h.path, note, patient))
            if roi.malformed:
                msg = f"ROI {roi.name!r}: {len(roi.malformed)} contour(s) skipped: {'; '.join(roi.malformed[:3])}"
                problems.append(Problem("warning", "malformed_contour", h.path, msg, patient))
            host = _contour_host(roi.closed_planar, loaded)
            mask, unmatched = rasterise(roi.closed_planar, host.geometry, host.sop_to_slice)
            for msg in unmatched:
                problems.append(
                    Problem("warning", "contour_no_slice", h.path, f"ROI {roi.name!r}: {msg}", patient)
                )
            if not mask.any():
                problems.append(
                    Problem("warning", "empty_mask", h.path, f"ROI {roi.name!r} gives an empty mask", patient)
                )
                continue
            on_grid = resample_mask(mask, host.geometry, reference)
            lost = _lost_on_resampling(_volume_ml(mask, host.geometry), on_grid, reference)
            if lost:
                code = "mask_shrunk" if on_grid.any() else "empty_mask"
                problems.append(Problem("warning", code, h.path, f"ROI {roi.name!r}: {lost}", patient))
                if not on_grid.any():
                    continue
            return on_grid, f"rtstruct:{roi.name}", problems
        try:
            seg = parse_seg(ds, h.path)
        except DicomError as err:
            problems.append(Problem("warning", "bad_seg", h.path, str(err).split(": ", 1)[-1], patient))
            continue
        number, note = select_segment(seg, patterns)
        if number is None:
            problems.append(Problem("warning", "no_tumour_roi", h.path, note, patient))
            continue
        mask = segment_mask(seg, number, reference)
        lost = _lost_on_resampling(seg_volume_ml(seg, number), mask, reference)
        if lost and mask.any():
            problems.append(Problem("warning", "mask_shrunk", h.path, f"tumour segment: {lost}", patient))
        if not mask.any():
            problems.append(
                Problem("warning", "empty_mask", h.path, "tumour segment is empty on the grid", patient)
            )
            continue
        return mask, f"seg:{seg.segment_labels[number]}", problems
    return None, "-", problems
