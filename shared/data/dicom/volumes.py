"""Load one chosen series as a rescaled volume on its own (sorted, checked) grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.dicom.geometry import VolumeGeometry, check_geometry
from shared.data.dicom.header import InstanceHeader
from shared.data.dicom.pixels import check_transfer_syntax, read_slice
from shared.data.report import Problem
from shared.errors import DicomError


@dataclass
class LoadedSeries:
    volume: np.ndarray  # (Z, H, W) float32, rescaled scanner units
    geometry: VolumeGeometry
    instances: list[InstanceHeader]  # one per slice, same order as volume
    sop_to_slice: dict[str, int]


def load_series(
    site_dir: Path, instances: list[InstanceHeader], patient: str, gap_factor: float, min_slices: int
) -> tuple[LoadedSeries, list[Problem]]:
    """Sort, de-duplicate, read pixels (bad slices dropped and reported), re-check geometry.

    Raises:
        DicomError: series unusable (no geometry, unsupported transfer syntax, too few readable slices).
    """
    problems: list[Problem] = []
    check = check_geometry(instances, gap_factor, min_slices)
    problems += [Problem("warning", c, f, m, patient) for c, f, m in check.problems]
    check_transfer_syntax(check.instances[0])  # one syntax per series in practice: fail fast and clearly
    frames_cache: dict[str, np.ndarray] = {}
    slices, kept = [], []
    for h in check.instances:
        try:
            s = read_slice(site_dir, h, frames_cache)
        except DicomError as err:
            code = (
                "unsupported_transfer_syntax" if "unsupported transfer syntax" in str(err) else "bad_pixels"
            )
            problems.append(Problem("warning", code, h.path, str(err).split(": ", 1)[-1], patient))
            continue
        slices.append(s)
        kept.append(h)
    if len(kept) < len(check.instances):
        if len(kept) < min_slices:
            raise DicomError(
                f"{check.instances[0].path}: only {len(kept)} of {len(check.instances)} slices have readable pixels; "
                f"expected at least {min_slices}. The series is skipped."
            )
        recheck = check_geometry(kept, gap_factor, min_slices)
        problems += [Problem("warning", c, f, m, patient) for c, f, m in recheck.problems if c == "slice_gap"]
        order = {h.path + f"#{h.frame}": i for i, h in enumerate(kept)}
        slices = [slices[order[h.path + f"#{h.frame}"]] for h in recheck.instances]
        check = recheck
    volume = np.stack(slices).astype(np.float32)
    if volume.size and np.all(volume == volume.flat[0]):
        raise DicomError(
            f"{check.instances[0].path}: every voxel of the {volume.shape[0]} slices is {float(volume.flat[0]):g}: "
            "the series holds no image (blank export, failed reconstruction or wrong window); it is not used. "
            "Re-export it from the scanner or PACS.",
            code="constant_volume",
        )
    sop_to_slice = {h.sop_uid: k for k, h in enumerate(check.instances) if h.frame < 0 and h.sop_uid}
    return LoadedSeries(volume, check.geometry, check.instances, sop_to_slice), problems
