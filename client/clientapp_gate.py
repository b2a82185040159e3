"""The site's ``flwr-clientapp``: Flower's ClientApp process, refusing any app the site has not approved.

Flower 1.42's SuperExec starts one ``flwr-clientapp`` process per message, found on ``PATH``. ``nasofl-site join``
puts a small ``flwr-clientapp`` script first on the SuperNode's ``PATH`` that runs this module. It runs Flower's
own ClientApp process (``flwr.supernode.runtime.run_clientapp``) with one change: the step that installs the
run's FAB first checks the FAB's SHA-256 against the approved-apps file (``NASOFL_APPROVED_APPS``). An unapproved
app is never unpacked or imported: Flower's process turns the :class:`client.approval.AppNotApproved` into an
error reply (code 2, CLIENT_APP_RAISED_EXCEPTION) whose reason, "app not approved by site X: FAB sha256 ...", the coordinator's study records
for that site; the refusal is logged here at ERROR level.

The script either runs this module directly (cold start) or, by default, ``client/clientapp_launcher.py``, which has
the site's zygote (``client/clientapp_zygote.py``, Flower and torch already imported) fork a process that runs this
module's :func:`main` (warm start), falling back to the cold start with a WARNING. Either way the FAB check comes
first; each process logs how long it took to get its app loaded (``ClientApp start-up (warm|cold): ...``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from client.approval import APPROVED_APPS_ENV, SITE_NAME_ENV, check_fab
from client.clientapp_launcher import LAUNCHED_AT_ENV, START_ENV
from shared.errors import NasoflError
from shared.quick_pulls import quicken

#: Name of the launcher script ``nasofl-site join`` writes (the command Flower's SuperExec runs).
LAUNCHER_NAME = "flwr-clientapp"
#: The zygote's Unix socket, beside the launcher script (client/clientapp_zygote.py).
ZYGOTE_SOCKET = "zygote.sock"


def write_launcher(folder: Path, warm: bool) -> Path:
    """Write ``folder/flwr-clientapp`` (0700) for this Python; return ``folder`` (made 0700).

    ``warm``: the script runs ``client/clientapp_launcher.py`` (warm start through the zygote on
    ``folder/zygote.sock``, cold start with a WARNING when it is not there); otherwise it runs this module directly
    (cold start, no zygote expected)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    script = folder / LAUNCHER_NAME
    if warm:
        launcher = Path(__file__).resolve().with_name("clientapp_launcher.py")
        command = f"'{sys.executable}' -I -S '{launcher}' '{folder.resolve() / ZYGOTE_SOCKET}'"
    else:
        command = f"'{sys.executable}' -m client.clientapp_gate"
    script.write_text(f'#!/bin/sh\nexec {command} "$@"\n', encoding="utf-8")
    script.chmod(0o700)
    return folder


def start_zygote(folder: Path) -> subprocess.Popen:
    """Start the warm-start zygote for the launcher in ``folder`` (client/clientapp_zygote.py) beside this process.

    It stays in this process's group and sandbox and stops when this process (about to become flower-supernode or
    flower-superexec under the same pid) is gone. Its log lines go to this process's stdout/stderr."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.clientapp_zygote",
            str(folder / ZYGOTE_SOCKET),
            "--parent-pid",
            str(os.getpid()),
        ]
    )


def forget_installed_packages() -> None:
    """Drop this process's imports of nasofl's own packages (the gate's), so that the ClientApp Flower loads next
    comes from the approved FAB's files (first on ``sys.path``), not from the installed copy of nasofl."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("client", "shared", "server", "simulations"):
            del sys.modules[name]


def since_launch_s() -> float:
    """Seconds since the ``flwr-clientapp`` launcher started (its time in the environment), else since this
    process started (Linux ``/proc``)."""
    launched_at = os.environ.get(LAUNCHED_AT_ENV)
    if launched_at:
        return time.time() - float(launched_at)
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    from logging import ERROR, INFO

    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supercore import log
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    marks = {"flwr imported": since_launch_s()}
    approved = os.environ.get(APPROVED_APPS_ENV, "")
    site = os.environ.get(SITE_NAME_ENV, "this site")
    if not approved:
        log(ERROR, "nasofl: %s is not set: refusing to run any ClientApp", APPROVED_APPS_ENV)
        sys.exit(1)
    install_from_fab = runtime.install_from_fab

    def install_approved(fab_content: bytes, *args, **kwargs):
        marks["task input pulled"] = since_launch_s()
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
            marks["app loaded"] = since_launch_s()
            shown = ", ".join(f"{k} {v:.1f} s" for k, v in marks.items())
            how = os.environ.get(START_ENV, "cold")
            log(INFO, "nasofl: ClientApp start-up (%s): %s after the launcher started", how, shown)
            return app

        return timed_load

    runtime.install_from_fab = install_approved
    runtime.get_load_client_app_fn = timed_load_fn
    # the SuperNode hands out the task before it has pulled the task's arrays: do not wait 1 s, 2 s, 4 s ... for them
    quicken(runtime, "pull_and_inflate_object_from_tree")
    flwr_clientapp()


if __name__ == "__main__":
    main()
