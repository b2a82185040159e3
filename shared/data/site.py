"""Entry point of ingestion: a site folder -> SiteCohort (PatientVolumes with splits + ValidationReport).

Site folder contract: ``labels.csv`` (patient_id,diagnosis), any tree of DICOM files (MR series,
RTSTRUCT / SEG masks; any names), optional ``site_mapping.json``. Patients are identified by the
DICOM PatientID. The site folder is only read; the cache (``cache_dir``) is written only when given.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from shared.data.cache import PatientCache, patient_key
from shared.data.dicom.header import InstanceHeader
from shared.data.dicom.index import index_tree
from shared.data.dicom.patient_ingest import ingest_patient
from shared.data.labels import LABELS_FILE, load_label_rows
from shared.data.mapping import SiteMapping, load_mapping
from shared.data.patient import LABELS, PatientVolumes
from shared.data.report import PatientSummary, Problem, Scrubber, ValidationReport
from shared.data.settings import IngestSettings
from shared.data.split import patient_split
from shared.errors import SiteDataError
from shared.pseudonym import DEFAULT_SALT, pseudonym

__all__ = ["IngestSettings", "SiteCohort", "load_site"]

log = logging.getLogger(__name__)
T = TypeVar("T")
CLASS_NAMES = {v: k for k, v in LABELS.items()}


@dataclass
class SiteCohort:
    site_name: str
    patients: list[PatientVolumes]  # ingested (>= 1 sequence), labelled or not, each with .split set
    report: ValidationReport

    @property
    def labelled(self) -> list[PatientVolumes]:
        return [p for p in self.patients if p.label is not None]

    def split(self, name: str) -> list[PatientVolumes]:
        return [p for p in self.labelled if p.split == name]


def patient_of(h: InstanceHeader) -> str:
    if h.patient_id:
        return h.patient_id
    return "no-id:" + h.path.split("/", 1)[0]  # fallback: top-level folder


def load_site(
    site_dir: Path,
    cache_dir: Path | None = None,
    settings: IngestSettings = IngestSettings(),  # noqa: B008 (frozen dataclass)
    salt: str = DEFAULT_SALT,
    progress: bool = False,
    keep_volumes: bool = True,
) -> SiteCohort:
    """Ingest a whole site folder. One bad file never stops the rest: it becomes a report problem.

    ``keep_volumes=False`` (validation only): arrays are dropped as soon as each patient is checked,
    so memory stays at one patient; ``SiteCohort.patients`` is then empty.

    Raises:
        SiteDataError: ``site_dir`` is not a folder.
    """
    site_dir = Path(site_dir).resolve()
    if not site_dir.is_dir():
        raise SiteDataError(f"site folder {site_dir.name!r} not found or not a folder; expected a folder with "
                            f"{LABELS_FILE} and DICOM files")  # fmt: skip
    report = ValidationReport(site_name=site_dir.name)
    try:
        mapping = load_mapping(site_dir)
    except SiteDataError as err:
        report.add("blocking", "bad_site_mapping", "site_mapping.json", str(err))
        mapping = SiteMapping()
    patterns = mapping.roi_names or settings.roi_patterns
    try:
        label_rows = load_label_rows(site_dir / LABELS_FILE)
    except SiteDataError as err:
        report.add("blocking", "bad_labels", LABELS_FILE, str(err))
        label_rows = {}
    cache = PatientCache(cache_dir, site_dir) if cache_dir is not None else None
    previous = cache.load_index() if cache else {}
    entries = index_tree(site_dir, previous, progress, exclude=cache.root if cache else None)
    unchanged = entries.keys() == previous.keys() and all(entries[k] is previous[k] for k in entries)
    if cache and not unchanged:  # rewriting an unchanged index costs ~0.3 s per ClientApp message
        cache.save_index(entries)
    report.files_indexed = len(entries)
    report.files_dicom = sum(1 for e in entries.values() if e.headers)
    scrubber = Scrubber()
    by_patient: dict[str, list[InstanceHeader]] = defaultdict(list)
    for entry in entries.values():
        patient = pseudonym(entry.patient_id, salt) if entry.patient_id else ""
        report.extend([replace(p, patient=p.patient or patient) for p in entry.problems])
        if entry.patient_id:
            scrubber.add(entry.patient_id, patient)
        for h in entry.headers:
            pid = patient_of(h)
            by_patient[pid].append(h)
            pseudo = pseudonym(pid, salt)
            scrubber.add(h.patient_id, pseudo)
            scrubber.add_name(h.patient_name, pseudo)
    label_rows = _align_label_ids(label_rows, set(by_patient))
    labels = {pid: label for pid, (label, _line) in label_rows.items()}
    for pid in labels:
        scrubber.add(pid, pseudonym(pid, salt))
    ingest_parts = (settings.cache_key(), mapping.source_hash, "|".join(patterns), salt)
    volumes: list[PatientVolumes] = []
    usable: list[tuple[str, int | None, bool]] = []  # (pseudonym, label, has mask)
    pids = sorted(by_patient, key=lambda p: pseudonym(p, salt))
    for pid in tqdm(pids, desc="patients", unit="patient", disable=not progress):
        pseudo = pseudonym(pid, salt)
        headers = by_patient[pid]
        key = patient_key(headers, *ingest_parts)
        result = cache.load(pseudo, key) if cache else None
        if result is None:
            try:
                result = ingest_patient(site_dir, headers, settings, mapping, patterns, pseudo)
            except (
                Exception
            ) as err:  # a bug or an input nobody foresaw: skip the patient, keep the site going
                log.warning("patient %s: ingestion failed (%s); patient skipped", pseudo, type(err).__name__)
                report.add("warning", "ingest_error", "", f"ingestion failed ({type(err).__name__}: "
                           f"{scrubber.scrub(str(err), strict=True)[:200]}); patient skipped. Please report this.", pseudo)  # fmt: skip
                report.patients.append(
                    PatientSummary(pseudo, pid, CLASS_NAMES.get(labels.get(pid), "-"), "-", False)
                )
                continue
            if cache:
                cache.save(pseudo, key, result)
        else:
            log.debug("patient %s: from cache", pseudo)
        summary = result.summary
        summary.raw_id = pid
        label = labels.get(pid)
        summary.label = CLASS_NAMES[label] if label is not None else "-"
        report.extend(result.problems)
        report.patients.append(summary)
        if label is None:
            report.add(
                "warning", "unlabelled_patient", "", "patient has DICOM data but no row in labels.csv", pseudo
            )
        if result.images:
            usable.append((pseudo, label, result.mask is not None))
            if keep_volumes:
                volumes.append(
                    PatientVolumes(
                        pseudo, label, result.images, result.mask, result.spacing_mm, notes=list(result.notes)
                    )
                )
    unknown = sorted((line, pid) for pid, (_label, line) in label_rows.items() if pid not in by_patient)
    for line, pid in unknown:
        msg = f"line {line}: no DICOM file has this patient_id as PatientID; check the id or add the images"
        report.problems.append(Problem("warning", "label_without_data", LABELS_FILE, msg, pseudonym(pid, salt),
                                       local=f"patient_id {pid!r}"))  # fmt: skip
    splits = patient_split({p: lab for p, lab, _ in usable}, settings.split_fractions, settings.split_seed)
    for v in volumes:
        v.split = splits[v.pseudonym]
    with_mask = {p for p, _lab, has_mask in usable if has_mask}
    for row in report.patients:
        split = splits.get(row.pseudonym, "-")
        if (
            row.label == "-" and split != "-"
        ):  # unlabelled: no classifier split; a mask still trains the segmenter
            split = f"seg:{split}" if row.pseudonym in with_mask else "-"
        row.split = split
    _site_level_checks(report, usable, labels)
    report.scrubber = scrubber
    log.info(
        "site %s: %d patients ingested (%d labelled), %d blocking problem(s), %d warning(s)",
        report.site_name, len(usable), sum(lab is not None for _, lab, _ in usable),
        len(report.blocking), len(report.warnings),
    )  # fmt: skip
    return SiteCohort(site_dir.name, volumes, report)


def _align_label_ids(labels: dict[str, T], dicom_ids: set[str]) -> dict[str, T]:
    """labels.csv ids that differ from a DICOM PatientID only by case map onto that PatientID."""
    folded: dict[str, list[str]] = {}
    for pid in dicom_ids:
        folded.setdefault(pid.casefold(), []).append(pid)
    out: dict[str, T] = {}
    for pid, lab in labels.items():
        if pid not in dicom_ids and len(folded.get(pid.casefold(), [])) == 1:
            pid = folded[pid.casefold()][0]
        out[pid] = lab
    return out


def _site_level_checks(
    report: ValidationReport, usable: list[tuple[str, int | None, bool]], labels: dict[str, int]
) -> None:
    """``usable``: (pseudonym, label, has mask) of every patient with at least one sequence."""
    if not usable:
        report.add("blocking", "no_usable_patient", "", "no patient has a usable T1 / T2 / T1CE series")
        return
    labelled = [(lab, has_mask) for _, lab, has_mask in usable if lab is not None]
    if labels and not labelled:
        report.add(
            "blocking", "no_labelled_patient", LABELS_FILE, "no ingested patient has a row in labels.csv"
        )
        return
    for name, value in LABELS.items():
        if labels and not any(lab == value for lab, _ in labelled):
            msg = f"no usable patient of class {name}; both NPC and NPL are needed"
            report.add("blocking", "missing_class", LABELS_FILE, msg)
    if labelled and not any(has_mask for _, has_mask in labelled):
        report.add(
            "warning",
            "no_masks",
            "",
            "no labelled patient has a tumour mask; the segmenter cannot train here",
        )
