"""The site's ``flwr-clientapp``: Flower's ClientApp process, refusing any app the site has not approved.

Flower 1.42's SuperExec starts one ``flwr-clientapp`` process per message, found on ``PATH``. ``nasofl-site join``
puts a small ``flwr-clientapp`` script first on the SuperNode's ``PATH`` that runs this module. It runs Flower's
own ClientApp process (``flwr.supernode.runtime.run_clientapp``) with one change: the step that installs the
run's FAB first checks the FAB's SHA-256 against the approved-apps file (``NASOFL_APPROVED_APPS``). An unapproved
app is never unpacked or imported: Flower's process turns the :class:`client.approval.AppNotApproved` into an
error reply (code 2, CLIENT_APP_RAISED_EXCEPTION) whose reason, "app not approved by site X: FAB sha256 ...", the coordinator's study records
for that site; the refusal is logged here at ERROR level.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from client.approval import APPROVED_APPS_ENV, SITE_NAME_ENV, check_fab
from shared.errors import NasoflError

#: Name of the launcher script ``nasofl-site join`` writes (the command Flower's SuperExec runs).
LAUNCHER_NAME = "flwr-clientapp"


def write_launcher(folder: Path) -> Path:
    """Write ``folder/flwr-clientapp`` (0700) running this module with this Python; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    script = folder / LAUNCHER_NAME
    script.write_text(
        f"#!/bin/sh\nexec '{sys.executable}' -m client.clientapp_gate \"$@\"\n", encoding="utf-8"
    )
    script.chmod(0o700)
    return folder


def forget_installed_packages() -> None:
    """Drop this process's imports of nasofl's own packages (the gate's), so that the ClientApp Flower loads next
    comes from the approved FAB's files (first on ``sys.path``), not from the installed copy of nasofl."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("client", "shared", "server", "simulations"):
            del sys.modules[name]


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``): the cold start-up cost, measured from the launcher."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    from logging import ERROR, INFO

    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supercore import log
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    marks = {"flwr imported": process_age_s()}
    approved = os.environ.get(APPROVED_APPS_ENV, "")
    site = os.environ.get(SITE_NAME_ENV, "this site")
    if not approved:
        log(ERROR, "nasofl: %s is not set: refusing to run any ClientApp", APPROVED_APPS_ENV)
        sys.exit(1)
    install_from_fab = runtime.install_from_fab

    def install_approved(fab_content: bytes, *args, **kwargs):
        marks["task input pulled"] = process_age_s()
        try:
            digest = check_fab(fab_content, Path(approved), site)
        except NasoflError as err:  # not approved, or the approved-apps file is unreadable
            log(ERROR, "nasofl: REFUSED: %s", err)
            raise
        log(INFO, "nasofl: app FAB sha256 %s is approved by site %s", digest, site)
        forget_installed_packages()
        return install_from_fab(fab_content, *args, **kwargs)

    load_fn = runtime.get_load_client_app_fn

    def timed_load_fn(*args, **kwargs):
        load = load_fn(*args, **kwargs)

        def timed_load(*a, **k):
            app = load(*a, **k)
            marks["app loaded"] = process_age_s()
            shown = ", ".join(f"{k} {v:.1f} s" for k, v in marks.items())
            log(INFO, "nasofl: ClientApp start-up: %s after the launcher started", shown)
            return app

        return timed_load

    runtime.install_from_fab = install_approved
    runtime.get_load_client_app_fn = timed_load_fn
    flwr_clientapp()


if __name__ == "__main__":
    main()
