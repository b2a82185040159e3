"""Per-patient ingestion cache: one ``.npz`` per patient, keyed by its source files and the settings.

Layout: ``CACHE_DIR/<site name>-<hash of the site path>/``
  - ``index.json``: header index of every file (reused for files with the same size and mtime),
  - ``<pseudonym>.npz``: arrays + JSON metadata (pseudonyms only), valid only when its stored key matches,
  - ``<pseudonym>.local.json``: that patient's report problems and series descriptions as found (raw
    paths and DICOM text, for the site-local ``--show-ids`` view), same key.
The key hashes (relative path, size, mtime_ns) of every source file of the patient (MR, RTSTRUCT,
SEG), the ingestion settings (``IngestSettings.cache_key``), the site mapping and the salt. Nothing is
written to the site folder unless ``cache_dir`` points into it; sources are only ever read.

Privacy: ``.npz`` entries hold pseudonyms only, but ``index.json`` and ``*.local.json`` copy DICOM
headers and paths (patient ids, names), as sensitive as the DICOM files: keep the cache inside the
hospital (created 0700).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.data.dicom.header import InstanceHeader
from shared.data.dicom.index import FileEntry
from shared.data.report import PatientSummary, Problem

log = logging.getLogger(__name__)
CACHE_FORMAT = 2


@dataclass
class IngestedPatient:
    """What ingestion of one patient produced (label and split are added later, never cached)."""

    images: dict[str, np.ndarray]
    mask: np.ndarray | None
    spacing_mm: tuple[float, float, float]
    summary: PatientSummary
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def patient_key(headers: list[InstanceHeader], *parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\x00")
    for path, size, mtime in sorted({(x.path, x.size, x.mtime_ns) for x in headers}):
        h.update(f"{path}\x00{size}\x00{mtime}\x00".encode())
    return h.hexdigest()[:32]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class PatientCache:
    def __init__(self, cache_dir: Path, site_dir: Path) -> None:
        site_dir = Path(site_dir).resolve()
        tag = hashlib.sha256(str(site_dir).encode()).hexdigest()[:8]
        self.root = Path(cache_dir).resolve() / f"{site_dir.name}-{tag}"

    # index -------------------------------------------------------------------------------------
    def load_index(self) -> dict[str, FileEntry]:
        path = self.root / "index.json"
        try:
            data = json.loads(path.read_text())
            if data.get("format") != CACHE_FORMAT:
                return {}
            return {k: FileEntry.from_json(v) for k, v in data["files"].items()}
        except FileNotFoundError:
            return {}
        except Exception as err:  # corrupt cache: rebuild, never fail
            log.warning("ignoring unreadable index cache (%s)", type(err).__name__)
            return {}

    def save_index(self, entries: dict[str, FileEntry]) -> None:
        payload = json.dumps({"format": CACHE_FORMAT, "files": {k: v.to_json() for k, v in entries.items()}})
        _atomic_write(self.root / "index.json", lambda p: Path(p).write_text(payload))

    # patients ----------------------------------------------------------------------------------
    def _path(self, pseudonym: str) -> Path:
        return self.root / f"{pseudonym}.npz"

    def _local_path(self, pseudonym: str) -> Path:
        return self.root / f"{pseudonym}.local.json"

    def load(self, pseudonym: str, key: str) -> IngestedPatient | None:
        path = self._path(pseudonym)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
                    return None
                images = {s: z[f"img_{s}"].astype(np.float32) for s in meta["sequences"]}
                mask = z["mask"].astype(np.uint8) if meta["has_mask"] else None
            local = json.loads(self._local_path(pseudonym).read_text())
            if local.get("key") != key:
                return None
        except FileNotFoundError:
            return None
        except Exception as err:
            log.warning("ignoring unreadable cache entry for %s (%s)", pseudonym, type(err).__name__)
            return None
        summary = PatientSummary(**meta["summary"])
        summary.sequences = local["sequences"]
        summary.cached = True
        return IngestedPatient(
            images,
            mask,
            tuple(meta["spacing_mm"]),
            summary,
            [Problem(**p) for p in local["problems"]],
            meta["notes"],
        )

    def save(self, pseudonym: str, key: str, patient: IngestedPatient) -> None:
        summary = asdict(patient.summary)
        summary["raw_id"] = ""  # raw ids never stored in the cache
        summary["sequences"] = {}  # series descriptions are DICOM free text: in the local file
        meta = {
            "format": CACHE_FORMAT,
            "key": key,
            "sequences": sorted(patient.images),
            "has_mask": patient.mask is not None,
            "spacing_mm": list(patient.spacing_mm),
            "summary": summary,
            "notes": patient.notes,
        }
        arrays = {f"img_{s}": a for s, a in patient.images.items()}
        if patient.mask is not None:
            arrays["mask"] = patient.mask
        arrays["meta"] = np.asarray(json.dumps(meta))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        local = {"key": key, "problems": [asdict(p) for p in patient.problems],
                 "sequences": patient.summary.sequences}  # fmt: skip
        _atomic_write(self._local_path(pseudonym), lambda p: Path(p).write_text(json.dumps(local)))
        _atomic_write(self._path(pseudonym), write)
