"""Salted pseudonyms for patient identifiers, and each site's own secret salt.

A patient id never leaves a hospital. Logs and errors that could travel to the server use
``pseudonym(patient_id, salt)``: a short, stable, salted SHA-256 digest. In deployment the salt is the site's own
random secret (:func:`site_salt`: generated on first use, kept 0600 in the site's cache folder, never sent), so
the coordinator cannot reverse a pseudonym by hashing candidate ids. :data:`DEFAULT_SALT` is public: it is only
for synthetic data (simulation, tests) and ``nasofl-site join`` refuses it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from shared.errors import ConfigError

DEFAULT_SALT = "nasofl-local-salt"
#: File name of the site salt inside the site's cache folder.
SALT_FILE = "pseudonym-salt"


def pseudonym(patient_id: str, salt: str = DEFAULT_SALT) -> str:
    """Return ``"p-" + 10 hex chars`` for a patient id; deterministic for one salt."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()
    return f"p-{digest[:10]}"


def site_salt(cache_dir: Path) -> str:
    """This site's salt from ``<cache_dir>/pseudonym-salt``, generated (256 random bits, mode 0600) if absent.

    The same salt must serve ``validate``, ``join`` and every ClientApp process of the site, so it is read from
    disk each time; losing the file changes every pseudonym (and the patient split) of the site.
    """
    path = cache_dir / SALT_FILE
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this site created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    salt = path.read_text(encoding="ascii").strip()
    if len(salt) < 32:
        raise ConfigError(
            f"{path}: the site's pseudonym salt is {len(salt)} characters, expected at least 32 (64 hex "
            "characters when generated); restore it from the site's backup (a new salt changes every pseudonym)"
        )
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by other users: chmod 600 {path}")
    return salt
