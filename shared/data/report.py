"""ValidationReport: every problem found while ingesting a site, plus summary tables.

A problem has a severity (``blocking``: training cannot start; ``warning``: data is skipped or
repaired; ``info``: a series left out on purpose, such as a localiser or DWI, counted in the table), a stable ``code``, the file path relative to the site folder and a message. The JSON form
and every log line use pseudonyms only: :class:`Scrubber` replaces raw patient ids and names in
paths and messages before they are stored. Raw ids are kept apart (``raw_ids``) so the site-local
human table can show them with ``--show-ids``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

Severity = Literal["blocking", "warning", "info"]


class Scrubber:
    """Replace raw patient identifiers (PatientID, PatientName parts) by pseudonyms in free text.

    Ids are replaced wherever they occur (also inside folder names such as ``ID_20230101``); name
    parts of 3+ characters only as whole tokens, so that "Li" or "Jane" do not eat unrelated words.
    Conservative by design: a short name part equal to a folder name (e.g. "MR1") is scrubbed too.
    """

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None

    def add(self, raw: str | None, pseudonym: str) -> None:
        raw = (raw or "").strip()
        if len(raw) >= 2 and raw.lower() not in self._ids:
            self._ids[raw.lower()] = pseudonym
            self._pattern = None

    def add_name(self, name: str | None, pseudonym: str) -> None:
        """PatientName ``Family^Given^...``: the whole name and each part of 3+ characters."""
        name = (name or "").strip()
        for part in [name, *re.split(r"[\^=\s,]+", name)]:
            part = part.strip()
            if len(part) >= 3 and part.lower() not in self._names:
                self._names[part.lower()] = pseudonym
                self._pattern = None

    def scrub(self, text: str) -> str:
        if not text or not (self._ids or self._names):
            return text
        if self._pattern is None:
            ids = "|".join(re.escape(k) for k in sorted(self._ids, key=len, reverse=True))
            names = "|".join(re.escape(k) for k in sorted(self._names, key=len, reverse=True))
            alts = [f"(?P<id>{ids})"] if ids else []
            if names:
                alts.append(f"(?<![A-Za-z0-9])(?P<name>{names})(?![A-Za-z0-9])")
            self._pattern = re.compile("|".join(alts), re.IGNORECASE)

        def repl(m: re.Match[str]) -> str:
            key = m.group(0).lower()
            return self._ids.get(key) or self._names.get(key) or "p-?"

        return self._pattern.sub(repl, text)


@dataclass(frozen=True)
class Problem:
    severity: Severity
    code: str
    file: str  # path relative to the site folder, "" when not about one file
    message: str
    patient: str = ""  # pseudonym, "" when unknown

    def scrubbed(self, scrubber: Scrubber) -> Problem:
        return Problem(
            self.severity, self.code, scrubber.scrub(self.file), scrubber.scrub(self.message), self.patient
        )


@dataclass
class PatientSummary:
    """One row of the per-patient table. ``raw_id`` never goes to JSON."""

    pseudonym: str
    raw_id: str
    label: str  # "NPC", "NPL" or "-"
    split: str
    usable: bool
    sequences: dict[str, str] = field(default_factory=dict)  # t1/t2/t1ce -> reason / series summary
    mask: str = "-"  # "rtstruct:GTVnx", "seg:Tumour", "-"
    geometry: dict[str, str] = field(default_factory=dict)  # sequence -> "0.50x0.50x4.0mm 256x256x24 thk 4.0"
    cached: bool = False


@dataclass
class ValidationReport:
    site_name: str
    problems: list[Problem] = field(default_factory=list)
    patients: list[PatientSummary] = field(default_factory=list)
    files_indexed: int = 0
    files_dicom: int = 0

    def add(self, severity: Severity, code: str, file: str, message: str, patient: str = "") -> Problem:
        problem = Problem(severity, code, file, message, patient)
        self.problems.append(problem)
        return problem

    def extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)

    def scrub(self, scrubber: Scrubber) -> None:
        self.problems = [p.scrubbed(scrubber) for p in self.problems]

    @property
    def blocking(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "blocking"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.blocking

    def class_counts(self, usable_only: bool = True) -> dict[str, int]:
        counts = Counter(p.label for p in self.patients if p.usable or not usable_only)
        return {k: counts.get(k, 0) for k in ("NPC", "NPL", "-")}

    def to_dict(self) -> dict:
        patients = []
        for row in self.patients:
            d = asdict(row)
            d.pop("raw_id")
            patients.append(d)
        return {
            "site": self.site_name,
            "ok": self.ok,
            "files_indexed": self.files_indexed,
            "files_dicom": self.files_dicom,
            "patients_per_class": self.class_counts(),
            "patients_per_class_all": self.class_counts(usable_only=False),
            "problem_counts": dict(Counter(f"{p.severity}:{p.code}" for p in self.problems)),
            "patients": patients,
            "problems": [asdict(p) for p in self.problems],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def format_table(self, show_ids: bool = False, max_problems: int = 200) -> str:
        """Human table for the site's IT team. Raw ids only with ``show_ids`` (stays in the hospital)."""
        lines = [f"Site {self.site_name}: {self.files_indexed} files, {self.files_dicom} DICOM"]
        usable, every = self.class_counts(), self.class_counts(usable_only=False)
        lines.append(
            "Patients per class (usable / all): "
            + ", ".join(f"{k} {usable[k]}/{every[k]}" for k in ("NPC", "NPL", "-"))
        )
        header = f"{'patient':<22} {'label':<5} {'split':<5} {'ok':<3} {'t1':<4} {'t2':<4} {'t1ce':<4} {'mask':<22} geometry"
        lines += ["", header, "-" * len(header)]
        for row in sorted(self.patients, key=lambda r: r.pseudonym):
            name = f"{row.raw_id} ({row.pseudonym})" if show_ids else row.pseudonym
            seqs = [("yes" if s in row.sequences else "-") for s in ("t1", "t2", "t1ce")]
            grid = row.geometry.get("grid", "")
            ref = grid.split(" ", 1)[-1] if grid else ""
            geom = grid + "".join(f"; {k} {v}" for k, v in row.geometry.items() if k != "grid" and v != ref)
            lines.append(
                f"{name:<22} {row.label:<5} {row.split:<5} {'yes' if row.usable else 'NO':<3} "
                f"{seqs[0]:<4} {seqs[1]:<4} {seqs[2]:<4} {row.mask:<22} {geom}"
            )
        lines.append("")
        notes = [p for p in self.problems if p.severity == "info"]
        n_block = len(self.blocking)
        n_warn = len(self.warnings)
        if notes:
            kinds = Counter(p.message.rsplit(": ", 1)[-1] for p in notes)
            detail = ", ".join(f"{why} {n}" for why, n in kinds.most_common())
            lines.append(f"Notes, expected and harmless (details in --json): {len(notes)} ({detail})")
        lines.append(f"Problems: {n_block} blocking, {n_warn} warnings")
        ordered = sorted(
            (p for p in self.problems if p.severity != "info"),
            key=lambda p: (p.severity != "blocking", p.code, p.file),
        )
        for p in ordered[:max_problems]:
            where = f" [{p.file}]" if p.file else ""
            who = f" {p.patient}" if p.patient else ""
            lines.append(f"  {p.severity.upper():<8} {p.code:<24}{who}{where}: {p.message}")
        if len(ordered) > max_problems:
            lines.append(f"  ... {len(ordered) - max_problems} more (see --json)")
        lines.append("")
        lines.append(
            "RESULT: " + ("OK, ready for training" if self.ok else "BLOCKED, fix the blocking problems")
        )
        return "\n".join(lines)
