"""ValidationReport: every problem found while ingesting a site, plus summary tables.

A problem has a severity (``blocking``: training cannot start; ``warning``: data is skipped or
repaired; ``info``: a series left out on purpose, such as a localiser or DWI, counted in the table), a stable ``code``, the file path relative to the site folder and a message. The JSON form
and every log line use pseudonyms only: :class:`Scrubber` replaces raw patient ids and names in
paths and messages when the report is written out. The report object itself keeps the raw text so that
the site-local human table can show real paths and ids with ``--show-ids``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

Severity = Literal["blocking", "warning", "info"]


class Scrubber:
    """Replace raw patient identifiers (PatientID, PatientName) by pseudonyms in free text.

    Report mode (default, for the validation report and its JSON): identifiers are replaced only as
    whole tokens (not next to a letter or digit, nor inside a number such as ``8.01``), so the file
    names a site chose stay intact (``IM0001.dcm`` keeps its ``01``) while a folder named after the id
    (``HOSP-1_20230101``) is pseudonymised. A PatientName is matched as the whole name in any usual
    spelling (``Doe^Jane``, ``DOE_JANE``, ``Jane Doe``), never one part alone, so words that happen to
    be a name part ("Test", "Patient", "Modality") are left alone; a one-part name (3+ characters) is
    matched as a token.

    Strict mode (``strict=True``, for text sent to the server): ids are replaced wherever they occur
    and every name part of 3+ characters as a token. Readability does not matter there, privacy does.
    """

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._names: dict[str, str] = {}  # regex of one whole name -> pseudonym
        self._parts: dict[str, str] = {}  # single name parts (strict mode only)
        self._patterns: dict[bool, re.Pattern[str] | None] = {False: None, True: None}

    def add(self, raw: str | None, pseudonym: str) -> None:
        raw = (raw or "").strip()
        if len(raw) >= 2 and raw.lower() not in self._ids:
            self._ids[raw.lower()] = pseudonym
            self._patterns = {False: None, True: None}

    def add_name(self, name: str | None, pseudonym: str) -> None:
        """PatientName ``Family^Given^Middle^Prefix^Suffix``, each ``=`` representation (alphabetic,
        ideographic, phonetic) on its own. Separators between parts may be absent (``张三``, ``DOEJANE``)."""
        sep = r"[\s_^,.\-]*"

        def rx(c: str) -> str:
            return sep.join(re.escape(w) for w in re.split(r"[\s_]+", c) if w)

        for group in (name or "").split("="):
            comps = [c.strip() for c in group.split("^") if c.strip()]
            if len(comps) == 1:
                short = 2 if not comps[0].isascii() else 3  # CJK names are often 2 characters
                forms = [rx(comps[0])] if len(comps[0]) >= short else []
            elif comps:
                family, given = comps[0], comps[1]
                forms = [
                    rx(family) + sep + rx(given),
                    rx(given) + sep + rx(family),
                    sep.join(rx(c) for c in comps),
                ]
            else:
                forms = []
            for f in forms:
                self._names.setdefault(f, pseudonym)
        for part in re.split(r"[\^=\s,]+", name or ""):
            part = part.strip()
            if len(part) >= 3 or (len(part) >= 1 and not part.isascii()):
                self._parts.setdefault(part.lower(), pseudonym)
        self._patterns = {False: None, True: None}

    def _pattern(self, strict: bool) -> re.Pattern[str] | None:
        if self._patterns[strict] is not None:
            return self._patterns[strict]
        left, right = r"(?<![A-Za-z0-9])(?<!\d\.)", r"(?![A-Za-z0-9])(?!\.\d)"
        ids = "|".join(re.escape(k) for k in sorted(self._ids, key=len, reverse=True))
        names = "|".join(sorted(self._names, key=len, reverse=True))
        alts = []
        if names:
            alts.append(f"{left}(?:{names}){right}")
        if ids:
            alts.append(f"(?:{ids})" if strict else f"{left}(?:{ids}){right}")
        if strict and self._parts:
            parts = "|".join(re.escape(k) for k in sorted(self._parts, key=len, reverse=True))
            alts.append(f"{left}(?:{parts}){right}")
        self._patterns[strict] = re.compile("|".join(alts), re.IGNORECASE) if alts else None
        return self._patterns[strict]

    def _lookup(self, matched: str) -> str:
        key = matched.lower()
        if key in self._ids:
            return self._ids[key]
        if key in self._parts:
            return self._parts[key]
        for form, pseudo in self._names.items():
            if re.fullmatch(form, matched, re.IGNORECASE):
                return pseudo
        return "p-?"

    def scrub(self, text: str, strict: bool = False) -> str:
        if not text:
            return text
        pattern = self._pattern(strict)
        if pattern is None:
            return text
        return pattern.sub(lambda m: self._lookup(m.group(0)), text)


@dataclass(frozen=True)
class Problem:
    severity: Severity
    code: str
    file: str  # path relative to the site folder, "" when not about one file
    message: str
    patient: str = ""  # pseudonym, "" when unknown
    local: str = ""  # site-local detail with raw identifiers (e.g. a labels.csv id): --show-ids view only

    def scrubbed(self, scrubber: Scrubber) -> Problem:
        """The form that may leave the site: identifiers pseudonymised, no local detail."""
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
    """``problems`` and ``patients`` hold raw paths and DICOM text (site-local). Everything that may
    leave the site goes through ``scrubber``: :meth:`to_dict` / :meth:`to_json` and the table without
    ``show_ids``. With ``show_ids`` the table is unscrubbed, so every path it names exists on disk."""

    site_name: str
    problems: list[Problem] = field(default_factory=list)
    patients: list[PatientSummary] = field(default_factory=list)
    files_indexed: int = 0
    files_dicom: int = 0
    scrubber: Scrubber = field(default_factory=Scrubber)

    def add(self, severity: Severity, code: str, file: str, message: str, patient: str = "") -> Problem:
        problem = Problem(severity, code, file, message, patient)
        self.problems.append(problem)
        return problem

    def extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)

    def public_problems(self) -> list[Problem]:
        """Problems as they may leave the site (pseudonymised, no local detail)."""
        return [p.scrubbed(self.scrubber) for p in self.problems]

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
            d["sequences"] = {k: self.scrubber.scrub(v) for k, v in row.sequences.items()}
            patients.append(d)
        problems = self.public_problems()
        return {
            "site": self.site_name,
            "ok": self.ok,
            "files_indexed": self.files_indexed,
            "files_dicom": self.files_dicom,
            "patients_per_class": self.class_counts(),
            "patients_per_class_all": self.class_counts(usable_only=False),
            "problem_counts": dict(Counter(f"{p.severity}:{p.code}" for p in problems)),
            "patients": patients,
            "problems": [{k: v for k, v in asdict(p).items() if k != "local"} for p in problems],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def format_table(self, show_ids: bool = False, max_problems: int = 200) -> str:
        """Human table for the site's IT team. Raw ids, real paths and local details only with ``show_ids``
        (stays in the hospital); without it, the same pseudonymised text as the JSON."""
        problems = self.problems if show_ids else self.public_problems()
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
        notes = [p for p in problems if p.severity == "info"]
        n_block = len(self.blocking)
        n_warn = len(self.warnings)
        if notes:
            kinds = Counter(p.message.rsplit(": ", 1)[-1] for p in notes)
            detail = ", ".join(f"{why} {n}" for why, n in kinds.most_common())
            lines.append(f"Notes, expected and harmless (details in --json): {len(notes)} ({detail})")
        lines.append(f"Problems: {n_block} blocking, {n_warn} warnings")
        ordered = sorted(
            (p for p in problems if p.severity != "info"),
            key=lambda p: (p.severity != "blocking", p.code, p.file),
        )
        for p in ordered[:max_problems]:
            where = f" [{p.file}]" if p.file else ""
            who = f" {p.patient}" if p.patient else ""
            local = f" ({p.local})" if show_ids and p.local else ""
            lines.append(f"  {p.severity.upper():<8} {p.code:<24}{who}{where}: {p.message}{local}")
        if len(ordered) > max_problems:
            lines.append(f"  ... {len(ordered) - max_problems} more (see --json)")
        if not show_ids and any(p.file != q.file for p, q in zip(problems, self.problems, strict=True)):
            lines.append(
                "  (paths with p-... are pseudonymised; --show-ids prints the real paths, for local use)"
            )
        lines.append("")
        lines.append(
            "RESULT: " + ("OK, ready for training" if self.ok else "BLOCKED, fix the blocking problems")
        )
        return "\n".join(lines)
