"""The bundle's manifest: format name and version, settings fingerprint, SHA-256 of every other file.

Invariant: a loaded bundle is byte for byte the bundle that was written. Any file added, removed or changed after
writing is refused, and so is a format version this code does not read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import BundleError

FORMAT_NAME = "nasofl-model-bundle"
#: Bumped whenever the layout or the meaning of a file changes; a loader reads exactly this version.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the settings (sorted keys): equal settings, equal fingerprint."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` but the manifest, as POSIX paths relative to ``root``, sorted."""
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def write_manifest(root: Path, fingerprint: str, code_version: str, created: str) -> Path:
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": created,
        "code_version": code_version,
        "settings_fingerprint": fingerprint,
        "files": {name: sha256_file(root / name) for name in bundle_files(root)},
    }
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def verify_manifest(root: Path) -> dict[str, Any]:
    """Check format, version and every file's hash; return the manifest. Raises BundleError naming what differs."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{root}: no {MANIFEST}; expected a model bundle folder written by a nasofl study "
            "(OUT/bundle of `nasofl-sim run`, `nasofl-sim centralized` or a deployed study)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err}); the bundle is damaged, copy it again") from None
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version!r}, this nasofl reads version {FORMAT_VERSION} only; "
            "use the nasofl version that wrote the bundle (its code_version: "
            f"{manifest.get('code_version')!r}) or re-export the bundle"
        )
    listed: dict[str, str] = manifest.get("files", {})
    present = set(bundle_files(root))
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    changed = sorted(n for n in set(listed) & present if sha256_file(root / n) != listed[n])
    problems = []
    if changed:
        problems.append(f"changed since it was written (SHA-256 differs): {', '.join(changed)}")
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if extra:
        problems.append(f"not in the manifest: {', '.join(extra)}")
    if problems:
        raise BundleError(
            f"bundle {root} refused: " + "; ".join(problems) + ". Use an untouched copy of the bundle."
        )
    return manifest
