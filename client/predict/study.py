"""``nasofl-site predict``: a study folder (one or more patients) through a model bundle.

Per patient, in OUT/<pseudonym>/: seg.dcm (DICOM SEG), rtstruct.dcm (RTSTRUCT), gradcam_<model>.png,
result.json, report.html and report.png. OUT/summary.csv holds one row per patient. The study folder is only
read (ingestion is the training ingestion, with the bundle's ingestion settings; nothing is cached).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from client.predict.dicom_out import read_sources, write_rtstruct, write_seg
from client.predict.inference import PatientPrediction, predict_patient
from client.predict.report_page import write_html, write_png
from shared.bundle import ModelBundle
from shared.data.dicom.header import InstanceHeader
from shared.data.dicom.index import index_tree
from shared.data.dicom.patient_ingest import ingest_patient_with_reference
from shared.data.mapping import load_mapping
from shared.data.patient import PatientVolumes
from shared.data.site import patient_of
from shared.errors import DicomError, SiteDataError
from shared.pseudonym import DEFAULT_SALT, pseudonym
from shared.reporting.table import dataset_label

log = logging.getLogger(__name__)

SUMMARY_FIELDS = [
    "patient",
    "tumour_found",
    "tumour_ml",
    "recommended",
    "p_npl_recommended",
    "call_recommended",
]


@dataclass
class PatientRun:
    pseudonym: str
    folder: Path
    prediction: PatientPrediction
    seconds: float
    files: dict[str, str]


class StepClock:
    """Process CPU seconds per step (on a shared machine wall time says little about the work done)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.process_time()

    def lap(self, name: str) -> None:
        now = time.process_time()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def study_patients(study_dir: Path) -> dict[str, list[InstanceHeader]]:
    """Patient id -> headers of every DICOM file under ``study_dir`` (read only)."""
    entries = index_tree(study_dir)
    by_patient: dict[str, list[InstanceHeader]] = defaultdict(list)
    for entry in entries.values():
        for h in entry.headers:
            by_patient[patient_of(h)].append(h)
    if not by_patient:
        raise SiteDataError(
            f"study folder {study_dir}: no DICOM file found; expected the patient's MR series"
        )
    return dict(by_patient)


def _write_contours(
    study_dir: Path, ref: Any, mask: Any, folder: Path, software: str
) -> tuple[dict[str, str], list[str]]:
    """SEG and RTSTRUCT on the reference series (mask resampled onto its own slices when the grid differs)."""
    from shared.data.dicom.resample import resample_mask

    notes = []
    on_source = mask
    if tuple(ref.grid.positions) != tuple(ref.series.geometry.positions):
        on_source = resample_mask(mask, ref.grid, ref.series.geometry)
        notes.append("reference series unevenly spaced: contours resampled onto its own slices")
    try:
        sources = read_sources(study_dir, [h.path for h in ref.series.instances])
    except DicomError as err:
        return {}, [f"no SEG / RTSTRUCT written: {err}"]
    files = {
        "seg": write_seg(sources, on_source, folder / "seg.dcm", software).name,
        "rtstruct": write_rtstruct(
            sources, on_source, ref.series.geometry, folder / "rtstruct.dcm", software
        ).name,
    }
    return files, notes


def predict_study(
    bundle: ModelBundle, study_dir: Path, out: Path, device: torch.device, salt: str = DEFAULT_SALT
) -> list[PatientRun]:
    """Every patient of ``study_dir``; writes OUT/<pseudonym>/ and OUT/summary.csv; returns the runs."""
    study_dir, out = Path(study_dir).resolve(), Path(out).resolve()
    if not study_dir.is_dir():
        raise SiteDataError(f"study folder {study_dir} not found or not a folder")
    if out == study_dir or study_dir in out.parents:
        raise SiteDataError(f"--out {out} is inside the study folder {study_dir}: predict never writes there")
    mapping = load_mapping(study_dir)
    patterns = mapping.roi_names or bundle.ingest.roi_patterns
    software = bundle.card["code_version"]
    runs: list[PatientRun] = []
    for pid, headers in sorted(study_patients(study_dir).items(), key=lambda kv: pseudonym(kv[0], salt)):
        t0 = time.perf_counter()
        clock = StepClock()
        pseudo = pseudonym(pid, salt)
        ingested, ref = ingest_patient_with_reference(
            study_dir, headers, bundle.ingest, mapping, patterns, pseudo
        )
        clock.lap("ingest")
        folder = out / pseudo
        folder.mkdir(parents=True, exist_ok=True)
        problems = [f"{p.code}: {p.message}" for p in ingested.problems if p.severity != "info"]
        if not ingested.images or ref is None:
            pred = PatientPrediction(
                pseudo, None, 0, 0.0, not_run={"segmenter": "no usable T1 / T2 / T1CE series"}
            )
        else:
            volumes = PatientVolumes(pseudo, None, ingested.images, None, ingested.spacing_mm, "test")
            pred = predict_patient(bundle, volumes, device, folder)
        clock.lap("models")
        pred.notes += problems
        files: dict[str, str] = {}
        if pred.mask is not None and pred.tumour_found and ref is not None:
            written, notes = _write_contours(study_dir, ref, pred.mask, folder, software)
            files.update(written)
            pred.notes += notes
        clock.lap("dicom")
        extra = {"device": str(device)}
        files["html"] = write_html(bundle, pred, folder / "report.html", extra).name
        files["png"] = write_png(bundle, pred, folder / "report.png", folder).name
        clock.lap("report")
        seconds = time.perf_counter() - t0
        result = {
            **pred.as_dict(),
            "seconds": round(seconds, 3),
            "cpu_seconds": clock.laps,
            "device": str(device),
        }
        (folder / "result.json").write_text(json.dumps({**result, "files": files}, indent=2))
        runs.append(PatientRun(pseudo, folder, pred, seconds, files))
        log.info("patient %s: %.1f s", pseudo, seconds)
    write_summary(runs, bundle, out / "summary.csv")
    return runs


def summary_rows(runs: list[PatientRun], bundle: ModelBundle) -> tuple[list[str], list[dict[str, Any]]]:
    datasets = list(bundle.card["classifiers"])
    fields = SUMMARY_FIELDS + [f"p_npl_{d.replace('+', '_')}" for d in datasets] + ["not_run", "seconds"]
    rows = []
    for r in runs:
        p = r.prediction
        rec = p.outputs.get(p.recommended) if p.recommended else None
        row: dict[str, Any] = {
            "patient": r.pseudonym,
            "tumour_found": p.tumour_found,
            "tumour_ml": p.tumour_ml,
            "recommended": p.recommended or "",
            "p_npl_recommended": f"{rec.probability:.4f}" if rec else "",
            "call_recommended": (rec.call or "") if rec else "",
            "not_run": "; ".join(
                f"{dataset_label(k) if k != 'segmenter' else k}: {v}" for k, v in p.not_run.items()
            ),
            "seconds": f"{r.seconds:.2f}",
        }
        for d in datasets:
            o = p.outputs.get(d)
            row[f"p_npl_{d.replace('+', '_')}"] = f"{o.probability:.4f}" if o else ""
        rows.append(row)
    return fields, rows


def write_summary(runs: list[PatientRun], bundle: ModelBundle, path: Path) -> Path:
    fields, rows = summary_rows(runs, bundle)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path
