"""The site's own secrets and rules: its random pseudonym salt, its approved-apps list, read-only data access."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from client.approval import AppNotApproved, app_fab, check_fab, fab_sha256, read_approved, record_approval
from client.node_data import resolve_site
from shared.errors import ConfigError, NasoflError
from shared.pseudonym import DEFAULT_SALT, pseudonym, site_salt

REPO = Path(__file__).resolve().parents[1]
ECHO_APP = REPO / "tests" / "apps" / "echoapp"


def test_each_site_gets_its_own_salt_and_keeps_it(tmp_path):
    a, b = site_salt(tmp_path / "a"), site_salt(tmp_path / "b")
    assert a != b and len(a) == 64 and DEFAULT_SALT not in (a, b)
    assert site_salt(tmp_path / "a") == a  # a restart reads the same salt
    assert (tmp_path / "a" / "pseudonym-salt").stat().st_mode & 0o777 == 0o600
    assert pseudonym("MRN0001", a) != pseudonym("MRN0001", b) != pseudonym("MRN0001")
    (tmp_path / "a" / "pseudonym-salt").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        site_salt(tmp_path / "a")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "pseudonym-salt").write_text("short\n")
    (tmp_path / "c" / "pseudonym-salt").chmod(0o600)
    with pytest.raises(ConfigError, match="expected at least 32"):
        site_salt(tmp_path / "c")


def test_a_deployed_clientapp_uses_the_site_salt_and_a_simulated_one_the_default(tmp_path):
    data = tmp_path / "hospital-a"
    data.mkdir()
    site = resolve_site({"data-path": str(data), "cache-path": str(tmp_path / "cache")}, {})
    assert site.salt == (tmp_path / "cache" / "pseudonym-salt").read_text().strip()
    again = resolve_site({"data-path": str(data)}, {})  # default cache: <data>/../.nasofl-cache/<site>
    assert again.salt == site_salt(tmp_path / ".nasofl-cache" / "hospital-a") != site.salt
    given = resolve_site({"data-path": str(data), "pseudonym-salt": "x" * 40}, {})
    assert given.salt == "x" * 40


def test_approved_apps_match_flowers_fab_hash_and_refuse_one_changed_byte(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    digest = fab_sha256(app_fab(ECHO_APP))
    assert digest == fab_sha256(build_fab_from_disk(ECHO_APP)) == fab_sha256(app_fab(ECHO_APP))
    listing = tmp_path / "approved-apps.txt"
    assert record_approval(listing, digest, "echoapp 1.0.0 reviewed") is True
    assert record_approval(listing, digest, "again") is False
    assert read_approved(listing) == {digest: "echoapp 1.0.0 reviewed"}
    assert check_fab(app_fab(ECHO_APP), listing, "hospital-a") == digest
    changed = tmp_path / "echoapp"
    shutil.copytree(ECHO_APP, changed)
    with open(changed / "echoapp" / "client.py", "a") as fh:
        fh.write(" ")
    with pytest.raises(AppNotApproved, match="app not approved by site hospital-a: FAB sha256 [0-9a-f]{64}"):
        check_fab(app_fab(changed), listing, "hospital-a")
    fab = tmp_path / "echo.fab"
    fab.write_bytes(app_fab(ECHO_APP))
    assert fab_sha256(app_fab(fab)) == digest
    listing.write_text(listing.read_text() + "not-a-hash  x\n")
    with pytest.raises(NasoflError, match="line 2: expected"):
        read_approved(listing)
    with pytest.raises(NasoflError, match="not found"):
        read_approved(tmp_path / "missing.txt")


def test_approve_command_prints_and_records_the_digest(tmp_path):
    listing = tmp_path / "approved-apps.txt"
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "approve", str(ECHO_APP), "--approved-apps", str(listing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    digest = fab_sha256(app_fab(ECHO_APP))
    assert done.stdout.splitlines() == [f"{digest}  {ECHO_APP}", f"approved: {listing}"]
    assert list(read_approved(listing)) == [digest]


AUDIT = r"""
import os, sys

site = os.path.realpath(sys.argv[1])
writes = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.rename", "os.replace", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
           "os.utime", "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move"}


def under_site(path):
    if isinstance(path, int):
        return False
    return os.path.realpath(os.fsdecode(path)).startswith(site)


def hook(event, args):
    if event == "open" and under_site(args[0]):
        mode, flags = args[1] or "", args[2] or 0
        if any(c in mode for c in "wax+") or flags & WRITE_FLAGS:
            writes.append((event, args[0], mode, flags))
    elif event in CHANGES and any(under_site(a) for a in args if isinstance(a, (str, bytes, os.PathLike))):
        writes.append((event, args))


sys.addaudithook(hook)
from client.node_data import load_site_data, resolve_site

data = load_site_data(resolve_site({"data-path": site, "cache-path": sys.argv[2]}, {}))
print(len(data.patients), "writes:", writes)
"""


def test_the_clientapp_opens_the_site_folder_for_reading_only(tmp_path):
    """Every file the ClientApp's data loading opens in the site folder (Python's audit hook sees each open) is
    opened read-only; nothing there is created, renamed or removed. The cache is written elsewhere."""
    from simulations.cohort_loading import TOY_GRID_ARGS
    from simulations.synth.cohort import CohortConfig, generate_cohort
    from simulations.synth.site_profile import GridPreset

    generate_cohort(
        tmp_path / "data",
        CohortConfig(sites=1, patients_per_site=(4,), seed=5, grid=GridPreset(**TOY_GRID_ARGS)),
        progress=False,
    )
    site = next(p for p in (tmp_path / "data").iterdir() if not p.name.startswith(("_", ".")))
    before = sorted((p.relative_to(site), p.stat().st_mtime_ns) for p in site.rglob("*"))
    done = subprocess.run(
        [sys.executable, "-c", AUDIT, str(site), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "4 writes: []", done.stdout
    assert sorted((p.relative_to(site), p.stat().st_mtime_ns) for p in site.rglob("*")) == before
    assert any((tmp_path / "cache").rglob("*")), "the cache was not written at all: the hook saw nothing"


def test_the_gate_forgets_its_own_imports_before_flower_loads_the_approved_fab():
    """The gate imports nasofl's installed ``client`` / ``shared``; Flower then imports the FAB's ``client.app``,
    which must come from the FAB's files, not from those already imported packages."""
    code = (
        "import sys; import client.clientapp_gate as gate; import client.approval, shared.errors; "
        "gate.forget_installed_packages(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('client', 'shared')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
