"""One patient's headers -> co-registered t1 / t2 / t1ce volumes and tumour mask on one grid."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.cache import IngestedPatient
from shared.data.dicom.classify import Classification, apply_time_order, choose, classify_series
from shared.data.dicom.geometry import VolumeGeometry
from shared.data.dicom.header import InstanceHeader
from shared.data.dicom.masks import is_rtstruct, is_seg, mask_from_objects
from shared.data.dicom.resample import resample
from shared.data.dicom.series import SeriesGroup, drop_cross_series_copies, group_series, non_volume_reason
from shared.data.dicom.volumes import LoadedSeries, load_series
from shared.data.mapping import SiteMapping
from shared.data.patient import SEQUENCES
from shared.data.report import PatientSummary, Problem
from shared.data.settings import IngestSettings
from shared.errors import DicomError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSeries:
    """The series the patient's grid comes from. ``grid`` equals ``series.geometry`` unless its slices were
    unevenly spaced (then ``grid`` is the evenly spaced version)."""

    sequence: str
    series: LoadedSeries
    grid: VolumeGeometry


def classify_patient(
    groups: list[SeriesGroup], settings: IngestSettings, mapping: SiteMapping, patient: str
) -> tuple[dict[str, dict[str, list[tuple[SeriesGroup, Classification]]]], list[Problem]]:
    """study key -> sequence -> ranked candidates; plus problems for excluded / split series."""
    problems: list[Problem] = []
    by_series: dict[str, list[SeriesGroup]] = defaultdict(list)
    for g in groups:
        by_series[g.series_uid].append(g)
    per_study: dict[str, list[tuple[SeriesGroup, Classification]]] = defaultdict(list)
    for parts in by_series.values():
        results = []
        for g in parts:
            c = classify_series(g, settings, mapping)
            nv = non_volume_reason(g, parts, settings.min_slices)
            if nv and not c.excluded:
                c = Classification(c.sequence, nv, c.reason, c.post_contrast, c.derived, c.mapped)
            results.append((g, c))
            per_study[g.study_key].append((g, c))
        excluded = [(g, c) for g, c in results if not c.usable]
        reasons = sorted({c.excluded or c.reason for _, c in excluded})
        head = parts[0]
        if excluded and len(reasons) == 1 and len(excluded) == len(parts):
            what = (
                head.label() if len(parts) == 1 else f"{head.label().split(' part ')[0]} ({len(parts)} parts)"
            )
            problems.append(
                Problem("info", "series_excluded", head.first.path, f"{what}: {reasons[0]}", patient)
            )
            continue
        if head.split_reason:
            problems.append(Problem("warning", "series_split", head.first.path, head.split_reason, patient))
        for g, c in excluded:
            msg = f"{g.label()}: {c.excluded or c.reason}"
            problems.append(Problem("info", "series_excluded", g.first.path, msg, patient))
    out: dict[str, dict[str, list[tuple[SeriesGroup, Classification]]]] = {}
    for study, items in per_study.items():
        items = apply_time_order(items)
        classes: dict[str, list[tuple[SeriesGroup, Classification]]] = defaultdict(list)
        for g, c in items:
            if c.usable:
                classes[c.sequence].append((g, c))
        out[study] = dict(classes)
    return out, problems


def ingest_patient(
    site_dir: Path,
    headers: list[InstanceHeader],
    settings: IngestSettings,
    mapping: SiteMapping,
    roi_patterns: tuple[str, ...],
    pseudonym: str,
) -> IngestedPatient:
    """Never raises for bad data: everything wrong ends up in ``problems`` (warnings)."""
    return ingest_patient_with_reference(site_dir, headers, settings, mapping, roi_patterns, pseudonym)[0]


def ingest_patient_with_reference(
    site_dir: Path,
    headers: list[InstanceHeader],
    settings: IngestSettings,
    mapping: SiteMapping,
    roi_patterns: tuple[str, ...],
    pseudonym: str,
) -> tuple[IngestedPatient, ReferenceSeries | None]:
    """:func:`ingest_patient` plus the reference series whose grid the volumes are on (None when no sequence
    loaded): what ``nasofl-site predict`` needs to write DICOM objects that reference the source images."""
    problems: list[Problem] = []
    summary = PatientSummary(pseudonym, "", "-", "-", False)
    images, copies = drop_cross_series_copies([h for h in headers if h.is_mr_image])
    problems += [Problem("warning", "duplicate_sop_uid", f, m, pseudonym) for f, m in copies]
    groups = group_series(images)
    objects = [h for h in headers if is_rtstruct(h) or is_seg(h)]
    studies, probs = classify_patient(groups, settings, mapping, pseudonym)
    problems += probs
    if not studies or not any(studies.values()):
        problems.append(
            Problem("warning", "no_usable_series", "", "no usable T1 / T2 / T1CE series", pseudonym)
        )
        return IngestedPatient({}, None, (1.0, 1.0, 1.0), summary, problems), None
    ranked = sorted(
        studies.items(),
        key=lambda kv: (-len(kv[1]), -sum(g.n_slices for c in kv[1].values() for g, _ in c), kv[0]),
    )
    study_key, classes = ranked[0]
    if len([s for s in studies.values() if s]) > 1:
        problems.append(
            Problem(
                "warning",
                "several_studies",
                "",
                f"{len(studies)} studies with MR series; used the one with most "
                f"sequences ({sorted(classes)})",
                pseudonym,
            )  # fmt: skip
        )
    loaded: dict[str, LoadedSeries] = {}
    for seq in settings.reference_order():
        cands = list(classes.get(seq, []))
        first = True
        while cands:
            chosen, note = choose(cands)
            if note and first:
                # a warning only when the choice is a toss-up (another ORIGINAL/DERIVED series of the same
                # orientation); coronal / sagittal or derived companions of an axial original are expected
                rank = next((c.derived, g.is_axial) for g, c in cands if g is chosen)
                tie = any((c.derived, g.is_axial) == rank for g, c in cands if g is not chosen)
                severity = "warning" if tie else "info"
                problems.append(
                    Problem(severity, "several_candidates", chosen.first.path, f"{seq}: {note}", pseudonym)
                )
            first = False
            try:
                series, probs = load_series(
                    site_dir, chosen.instances, pseudonym, settings.gap_factor, settings.min_slices
                )
            except DicomError as err:
                msg = str(err)
                code = err.code or (
                    "unsupported_transfer_syntax"
                    if "unsupported transfer syntax" in msg
                    else "series_rejected"
                )
                file, _, text = msg.partition(": ")
                problems.append(Problem("warning", code, file, f"{seq} {chosen.label()}: {text}", pseudonym))
                cands = [gc for gc in cands if gc[0] is not chosen]
                continue
            problems += probs
            loaded[seq] = series
            cls = next(c for g, c in classes[seq] if g is chosen)
            summary.sequences[seq] = f"{chosen.label()}: {cls.reason}"
            break
    for seq in SEQUENCES:
        if seq not in loaded:
            problems.append(Problem("warning", "missing_sequence", "", f"no usable {seq} series", pseudonym))
    if not loaded:
        return IngestedPatient({}, None, (1.0, 1.0, 1.0), summary, problems), None
    ref_seq = next(s for s in settings.reference_order() if s in loaded)
    ref = loaded[ref_seq]
    grid = ref.geometry.uniform()
    if abs(float(grid.normal[2])) < 0.8:
        msg = f"reference grid ({ref_seq}) is not axial; volumes are stored in its slice orientation"
        problems.append(Problem("warning", "non_axial_grid", ref.instances[0].path, msg, pseudonym))
    images: dict[str, np.ndarray] = {}
    ref_for = ref.instances[0].frame_of_ref
    for seq, s in loaded.items():
        if s.instances[0].frame_of_ref and ref_for and s.instances[0].frame_of_ref != ref_for:
            problems.append(Problem("warning", "frame_of_reference", s.instances[0].path,
                                    f"{seq} has another FrameOfReferenceUID than {ref_seq}; resampled assuming "
                                    "the same patient coordinates", pseudonym))  # fmt: skip
        images[seq] = resample(s.volume, s.geometry, grid, order=1)
        summary.geometry[seq] = s.geometry.describe()
    summary.geometry["grid"] = f"{ref_seq} {grid.describe()}"
    order = [ref] + [s for k, s in loaded.items() if k != ref_seq]
    mask, source, probs = mask_from_objects(site_dir, objects, order, grid, roi_patterns, pseudonym)
    problems += probs
    if not objects:
        problems.append(
            Problem(
                "info", "no_mask", "", "no RTSTRUCT or SEG object for this patient: no tumour mask", pseudonym
            )
        )
    summary.mask = source
    summary.usable = True
    seen, unique = set(), []
    for p in problems:
        if (p.code, p.file, p.message) not in seen:
            seen.add((p.code, p.file, p.message))
            unique.append(p)
    notes = [f"reference grid {ref_seq}"] + [
        f"{k}: series {s.instances[0].series_uid}" for k, s in loaded.items()
    ]
    patient = IngestedPatient(images, mask, grid.spacing_zyx, summary, unique, notes)
    return patient, ReferenceSeries(ref_seq, ref, grid)
