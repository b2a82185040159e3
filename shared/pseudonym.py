"""Salted pseudonyms for patient identifiers.

A patient id never leaves a hospital. Logs and errors that could travel to the server use
``pseudonym(patient_id, salt)``: a short, stable, salted SHA-256 digest. The salt is per site
(node config / site folder), so the coordinator cannot reverse it by hashing candidate ids.
"""

from __future__ import annotations

import hashlib

DEFAULT_SALT = "nasofl-local-salt"


def pseudonym(patient_id: str, salt: str = DEFAULT_SALT) -> str:
    """Return ``"p-" + 10 hex chars`` for a patient id; deterministic for one salt."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()
    return f"p-{digest[:10]}"
