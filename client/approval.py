"""The site's allowlist of approved apps: only a Flower App Bundle (FAB) whose SHA-256 the site approved runs here.

Flower 1.42's own check, ``flower-supernode --trusted-entities``, accepts only FABs that carry a Flower Hub
verification (``valid_license``, filled in by the SuperLink only for apps fetched from the Hub): a FAB built by
``flwr run .`` has none, so every locally built app would be refused. The site instead keeps a text file of
approved FAB digests (one ``SHA256  note`` per line, written by ``nasofl-site approve``), and the ClientApp
launcher (``client.clientapp_gate``) checks each task's FAB against it before installing or importing any of it.

The digest is the one Flower uses (``fab_hash`` of ``flwr run``): SHA-256 of the FAB that ``flwr build`` /
``flwr run`` make from the app folder. FAB builds are deterministic (fixed zip timestamps), so a reviewed folder
and the coordinator's ``flwr run`` of the same files give the same digest; one changed byte gives another.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from shared.errors import NasoflError

#: Environment of the ClientApp launcher (set by ``nasofl-site join``).
APPROVED_APPS_ENV = "NASOFL_APPROVED_APPS"
SITE_NAME_ENV = "NASOFL_SITE_NAME"

_LINE = re.compile(r"^([0-9a-f]{64})(?:\s+(.*))?$")


class AppNotApproved(NasoflError):
    """A run's app is not on this site's approved-apps list (its message text reaches the coordinator)."""


def fab_sha256(fab: bytes) -> str:
    return hashlib.sha256(fab).hexdigest()


def app_fab(app: Path) -> bytes:
    """The FAB of ``app``: built from an app folder exactly as ``flwr run`` builds it, or read from a ``.fab``."""
    if app.is_dir():
        from flwr.cli.build import build_fab_from_disk

        try:
            return build_fab_from_disk(app)
        except ValueError as err:
            raise NasoflError(f"{app}: not a buildable Flower app ({err})") from None
    if app.is_file():
        return app.read_bytes()
    raise NasoflError(f"{app}: no such app folder or .fab file")


def read_approved(path: Path) -> dict[str, str]:
    """``{sha256: note}`` from an approved-apps file; blank lines and ``#`` comments are skipped."""
    if not path.is_file():
        raise NasoflError(
            f"approved-apps file {path} not found: review the app, then `nasofl-site approve APP "
            f"--approved-apps {path}`"
        )
    approved: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise NasoflError(
                f"{path} line {number}: expected '<64 lowercase hex SHA-256>  <note>', got {line[:80]!r}"
            )
        approved[match.group(1)] = match.group(2) or ""
    return approved


def record_approval(path: Path, digest: str, note: str) -> bool:
    """Append ``digest`` to the approved-apps file (created 0644 if absent); False when already there."""
    if path.exists() and digest in read_approved(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{digest}  {' '.join(note.split())}\n")
    return True


def check_fab(fab: bytes, approved_file: Path, site: str) -> str:
    """Return the FAB's SHA-256 if ``approved_file`` lists it; raise :class:`AppNotApproved` otherwise."""
    digest = fab_sha256(fab)
    if digest not in read_approved(approved_file):
        raise AppNotApproved(
            f"app not approved by site {site}: FAB sha256 {digest} is not on the site's approved-apps list "
            "(the site reviews the app, then runs `nasofl-site approve`)"
        )
    return digest
