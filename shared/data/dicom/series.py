"""Group instances by patient / study / series, and split series that mix orientations or sizes.

One real series can hold several orientations (3-plane localisers) or rotating projections (MRA);
parts are keyed on (ImageOrientationPatient, Rows, Columns, EchoNumbers, TemporalPositionIdentifier).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from shared.data.dicom.header import InstanceHeader


@dataclass
class SeriesGroup:
    """Instances of one homogeneous part of one series (one orientation, one matrix, one echo/time)."""

    patient_id: str
    study_key: str
    series_uid: str
    part: int
    n_parts: int
    instances: list[InstanceHeader]
    split_reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.series_uid}#{self.part}"

    @property
    def first(self) -> InstanceHeader:
        return self.instances[0]

    @property
    def n_slices(self) -> int:
        return len(self.instances)

    @property
    def normal(self) -> np.ndarray | None:
        iop = self.first.iop
        if iop is None:
            return None
        n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
        norm = np.linalg.norm(n)
        return n / norm if norm > 0 else None

    @property
    def is_axial(self) -> bool:
        n = self.normal
        return n is not None and abs(float(n[2])) >= 0.8

    @property
    def start_time(self) -> float | None:
        times = [i.acquisition_time for i in self.instances if i.acquisition_time is not None]
        if times:
            return min(times)
        return self.first.series_time

    def label(self) -> str:
        """Short human name: 'series 5 "T2 ax" (24 slices, axial)'. May contain free text: scrub before export."""
        f = self.first
        num = f.series_number if f.series_number is not None else "?"
        desc = f.series_description or f.protocol_name or "no description"
        part = f" part {self.part + 1}/{self.n_parts}" if self.n_parts > 1 else ""
        ori = "axial" if self.is_axial else ("no orientation" if self.normal is None else "non-axial")
        return f'series {num} "{desc}"{part} ({self.n_slices} slices, {ori})'


def _part_key(h: InstanceHeader) -> tuple:
    iop = tuple(round(v, 3) for v in h.iop) if _valid_iop(h.iop) else None
    return (iop, h.rows, h.columns, h.echo_number or 1, h.temporal_position or 0)


def _valid_iop(iop: tuple[float, ...] | None) -> bool:
    if iop is None or not np.all(np.isfinite(iop)):
        return False
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    return abs(np.linalg.norm(row) - 1) <= 0.01 and abs(np.linalg.norm(col) - 1) <= 0.01


def _attach_orphans(parts: dict[tuple, list[InstanceHeader]]) -> None:
    """Slices without a usable orientation join the largest part of the same matrix / echo / time, so
    that the geometry check reports and drops them (alone they would look like a one-slice series)."""
    for key in [k for k in parts if k[0] is None]:
        hosts = [k for k in parts if k[0] is not None and k[1:] == key[1:]]
        if hosts:
            host = max(hosts, key=lambda k: len(parts[k]))
            parts[host].extend(parts.pop(key))


def drop_cross_series_copies(
    headers: list[InstanceHeader],
) -> tuple[list[InstanceHeader], list[tuple[str, str]]]:
    """Instances whose SOPInstanceUID also appears in another series (a mis-merged slice): every copy is
    dropped, since nothing tells which series it belongs to. Returns (kept, [(file, message)])."""
    by_uid: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        if h.sop_uid and h.frame < 0:
            by_uid[h.sop_uid].append(h)
    drop: set[str] = set()
    problems: list[tuple[str, str]] = []
    for copies in by_uid.values():
        if len({h.series_uid for h in copies}) < 2:
            continue
        where = ", ".join(f"{h.path} (series {h.series_number if h.series_number is not None else '?'})"
                          for h in copies)  # fmt: skip
        for h in copies:
            drop.add(h.path)
            problems.append((h.path, f"one SOPInstanceUID in {len({c.series_uid for c in copies})} series "
                             f"({where}): a mis-merged slice; every copy dropped. Remove the wrong file and "
                             "validate again."))  # fmt: skip
    return [h for h in headers if h.path not in drop], problems


def group_series(headers: list[InstanceHeader]) -> list[SeriesGroup]:
    """MR image instances -> homogeneous SeriesGroups (sorted by patient, study, series, part)."""
    by_series: dict[tuple[str, str, str], list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        if h.is_mr_image:
            by_series[(h.patient_id, h.study_key, h.series_uid or f"no-series:{h.path}")].append(h)
    groups: list[SeriesGroup] = []
    for (pid, study, series), insts in sorted(by_series.items()):
        parts: dict[tuple, list[InstanceHeader]] = defaultdict(list)
        for h in insts:
            parts[_part_key(h)].append(h)
        _attach_orphans(parts)
        ordered = sorted(parts.values(), key=lambda p: (-len(p), p[0].path))
        reason = ""
        if len(ordered) > 1:
            keys = [_part_key(p[0]) for p in ordered]
            what = []
            if len({k[0] for k in keys}) > 1:
                what.append(f"{len({k[0] for k in keys})} orientations")
            if len({k[1:3] for k in keys}) > 1:
                what.append("several matrix sizes")
            if len({k[3:] for k in keys}) > 1:
                what.append("several echoes / temporal positions")
            reason = f"series split into {len(ordered)} parts: " + ", ".join(what)
        for i, part in enumerate(ordered):
            groups.append(SeriesGroup(pid, study, series, i, len(ordered), part, reason))
    return groups


def non_volume_reason(group: SeriesGroup, siblings: list[SeriesGroup], min_slices: int) -> str:
    """Why this part is not a usable volume ('' when it is one).

    ``siblings``: every part of the same series (including ``group``).
    """
    if group.n_slices >= min_slices:
        return ""
    n_ori = len({_part_key(s.first)[0] for s in siblings})
    if n_ori >= 3 and all(s.n_slices < min_slices for s in siblings):
        normals = [s.normal for s in siblings if s.normal is not None]
        orthogonal = len(normals) >= 3 and all(
            abs(float(a @ b)) < 0.1
            for i, a in enumerate(normals)
            for b in normals[i + 1 :]
            if not np.allclose(a, b)
        )
        if orthogonal and n_ori <= 3:
            return f"3-plane localiser ({n_ori} orthogonal orientations in one series, {group.n_slices} slice(s) each)"
        return (
            f"not a volume: the orientation changes from slice to slice ({n_ori} orientations in one series, "
            "e.g. rotating MRA projections)"
        )
    return f"only {group.n_slices} slice(s); a volume needs at least {min_slices}"
