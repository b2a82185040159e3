"""``labels.csv``: ``patient_id,diagnosis`` with diagnosis NPC or NPL (case and whitespace tolerant).

Errors name the file and the line. A broken file raises SiteDataError listing every bad line; rows
with an unknown diagnosis or a duplicate id are errors (never guessed). Patient ids never leave the
site: messages print the line number, not the id.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from shared.data.patient import LABELS
from shared.errors import SiteDataError

LABELS_FILE = "labels.csv"
ID_COLUMNS = ("patient_id", "patientid", "patient", "id")
DIAG_COLUMNS = ("diagnosis", "label", "class")


def _norm_header(s: str) -> str:
    return s.strip().lower().replace(" ", "_").lstrip("\ufeff")


def load_labels(path: Path) -> dict[str, int]:
    """Parse labels.csv -> {patient_id: 0 (NPC) | 1 (NPL)} (see :func:`load_label_rows`)."""
    return {pid: label for pid, (label, _line) in load_label_rows(path).items()}


def load_label_rows(path: Path) -> dict[str, tuple[int, int]]:
    """Parse labels.csv -> {patient_id: (0 (NPC) | 1 (NPL), line number in the file)}.

    Raises:
        SiteDataError: missing file, bad header, empty id, unknown diagnosis, duplicate id (all bad lines listed).
    """
    name = path.name
    if not path.exists():
        raise SiteDataError(
            f"{name}: not found in the site folder; expected a CSV with header 'patient_id,diagnosis' and one row "
            "per patient (diagnosis NPC or NPL)"
        )
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SiteDataError(f"{name}: not UTF-8 text ({err}); save it as UTF-8 CSV") from None
    dialect = csv.excel
    try:
        dialect = csv.Sniffer().sniff(content.splitlines()[0] if content else "", delimiters=",;\t")
    except csv.Error:
        pass
    rows = list(csv.reader(io.StringIO(content), dialect))
    rows_numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows_numbered:
        raise SiteDataError(f"{name}: empty; expected header 'patient_id,diagnosis' then one row per patient")
    line0, header = rows_numbered[0]
    cols = [_norm_header(c) for c in header]
    id_col = next((cols.index(c) for c in ID_COLUMNS if c in cols), None)
    diag_col = next((cols.index(c) for c in DIAG_COLUMNS if c in cols), None)
    if id_col is None or diag_col is None:
        raise SiteDataError(
            f"{name} line {line0}: header {header!r}; expected columns 'patient_id' and 'diagnosis' (any order, "
            "case-insensitive)"
        )
    out: dict[str, tuple[int, int]] = {}
    first_line: dict[str, int] = {}
    errors: list[str] = []
    for line, row in rows_numbered[1:]:
        if len(row) <= max(id_col, diag_col):
            errors.append(f"line {line}: {len(row)} column(s); expected at least {max(id_col, diag_col) + 1}")
            continue
        pid, diag = row[id_col].strip(), row[diag_col].strip().upper()
        if not pid:
            errors.append(f"line {line}: empty patient_id")
            continue
        if diag not in LABELS:
            errors.append(f"line {line}: diagnosis {row[diag_col].strip()!r}; expected NPC or NPL")
            continue
        if pid in out:
            errors.append(f"line {line}: duplicate patient_id (first on line {first_line[pid]})")
            continue
        out[pid] = (LABELS[diag], line)
        first_line[pid] = line
    if errors:
        shown = "; ".join(errors[:20]) + (f"; ... {len(errors) - 20} more" if len(errors) > 20 else "")
        raise SiteDataError(
            f"{name}: {len(errors)} bad line(s): {shown}. Fix these lines and run validate again."
        )
    return out
