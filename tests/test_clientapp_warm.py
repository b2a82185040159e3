"""The warm ClientApp start (client/clientapp_zygote.py + client/clientapp_launcher.py) with real processes.

A zygote is started as ``nasofl-site join`` starts it (``client.clientapp_gate.start_zygote``'s command, with a
short --preload so the test stays quick), the site's ``flwr-clientapp`` script is written by ``write_launcher``
and run as Flower's SuperExec runs it. Without ``NASOFL_APPROVED_APPS`` the gate refuses to run any ClientApp
(exit 1, an ERROR line): that shows which process ran the gate and that its exit code comes back. The refusal of
an unapproved FAB through the warm path, with a real SuperLink and SuperNodes, is in tests/test_deploy_boundary.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from client.clientapp_gate import LAUNCHER_NAME, ZYGOTE_SOCKET, write_launcher

FLWR_ONLY = "flwr.supernode.runtime.run_clientapp,flwr.supernode.cli.flwr_clientapp"
NOBODY = 65534


@pytest.fixture
def gate(tmp_path):
    """(launcher folder, the zygote's log) with a zygote listening in that folder; stopped after the test."""
    folder = write_launcher(tmp_path / "cache" / "clientapp-gate", warm=True)
    log = tmp_path / "zygote.log"
    with open(log, "w") as fh:
        zygote = subprocess.Popen(
            [sys.executable, "-m", "client.clientapp_zygote", str(folder / ZYGOTE_SOCKET)]
            + ["--parent-pid", str(os.getpid()), "--preload", FLWR_ONLY],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 60
        while "ready on" not in log.read_text():
            assert zygote.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        yield folder, log
    finally:
        zygote.terminate()
        zygote.wait(timeout=30)
    assert not (folder / ZYGOTE_SOCKET).exists(), "the zygote left its socket behind"


def launch(
    folder: Path, *args: str, user: int | None = None, approved: Path | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NASOFL_APPROVED_APPS"}
    if approved is not None:  # past the gate's first check: Flower's own argument parser runs
        env["NASOFL_APPROVED_APPS"] = str(approved)
    cmd = [str(folder / LAUNCHER_NAME), *args]
    if user is not None:  # the script is root's (0700): another user runs what it runs
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        cmd += (
            (folder / LAUNCHER_NAME)
            .read_text()
            .split("exec ", 1)[1]
            .split('"$@"')[0]
            .replace("'", "")
            .split()
        )
        cmd += list(args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=folder.parent)


def test_warm_start_runs_the_gate_in_a_forked_child_and_returns_its_exit_code(gate):
    folder, log = gate
    refused = launch(folder, "--runtime-api-address", "127.0.0.1:9", "--token", "t", "--insecure")
    assert refused.returncode == 1, refused.stderr
    assert "warm ClientApp start: process" in refused.stderr, refused.stderr
    assert "NASOFL_APPROVED_APPS is not set: refusing to run any ClientApp" in refused.stderr
    assert "starting cold" not in refused.stderr
    helped = launch(
        folder, "--help", approved=folder / "approved-apps.txt"
    )  # Flower's own argument parser, in the child, on the launcher's stdout
    assert helped.returncode == 0 and "--runtime-api-address" in helped.stdout, helped.stderr
    assert "warm ClientApp start: process" in helped.stderr
    wrong = launch(folder, "--insecure", approved=folder / "approved-apps.txt")
    assert wrong.returncode == 2 and "one of the arguments --token --token-file is required" in wrong.stderr
    assert "warm ClientApp start: process" in wrong.stderr
    assert "REFUSED" not in log.read_text()


def test_a_launcher_of_another_uid_is_refused_and_starts_cold(gate, tmp_path):
    folder, log = gate
    if os.getuid() != 0:
        pytest.skip("needs root to run a launcher as another uid")
    # the socket sits in a 0700 folder; a hard link in a shared folder lets another uid reach the same socket
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.link(folder / ZYGOTE_SOCKET, shared / ZYGOTE_SOCKET)
    os.chmod(shared / ZYGOTE_SOCKET, 0o666)
    for path in (tmp_path, *tmp_path.parents):  # up to the temp root (one level deeper under pytest-xdist)
        if path == Path(tempfile.gettempdir()) or path == path.parent:
            break
        os.chmod(path, os.stat(path).st_mode | 0o005)
    script = (
        (folder / LAUNCHER_NAME).read_text().replace(str(folder / ZYGOTE_SOCKET), str(shared / ZYGOTE_SOCKET))
    )
    (folder / LAUNCHER_NAME).write_text(script)
    other = launch(folder, "--runtime-api-address", "127.0.0.1:9", "--token", "t", "--insecure", user=NOBODY)
    assert f"REFUSED a connection from uid {NOBODY}" in log.read_text(), log.read_text()
    assert f"refused by the zygote on {shared / ZYGOTE_SOCKET} (uid {NOBODY} is not the zygote's uid 0)" in (
        other.stderr
    ), other.stderr
    assert "starting cold" in other.stderr and "warm ClientApp start: process" not in other.stderr
    # (the cold start then runs as that uid, with that uid's rights: here it may not even run root's Python)
    assert other.returncode != 0


def test_without_a_zygote_the_launcher_warns_and_starts_cold(tmp_path):
    folder = write_launcher(tmp_path / "clientapp-gate", warm=True)
    missing = launch(folder, "--runtime-api-address", "127.0.0.1:9", "--token", "t", "--insecure")
    assert "WARNING" in missing.stderr and "warm ClientApp start unavailable" in missing.stderr, (
        missing.stderr
    )
    assert "No such file or directory); starting cold" in missing.stderr
    assert (
        missing.returncode == 1 and "NASOFL_APPROVED_APPS is not set" in missing.stderr
    )  # the gate ran, cold
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a zygote killed without removing its socket
    stale.bind(str(folder / ZYGOTE_SOCKET))
    stale.close()
    refused = launch(folder, "--help", approved=folder / "approved-apps.txt")
    assert "Connection refused); starting cold" in refused.stderr, refused.stderr
    assert refused.returncode == 0 and "--runtime-api-address" in refused.stdout


@pytest.mark.parametrize(
    ("module", "refusal"),
    [
        ("shared.errors", "imported nasofl's own shared, shared.errors"),
        ("opacus", "added a root logging handler"),
    ],
)
def test_the_zygote_refuses_preloads_that_would_change_the_clientapp(tmp_path, module, refusal):
    """nasofl's own code must come from the approved FAB; a module that configures logging at import (opacus)
    would make every forked ClientApp log differently from a cold one."""
    folder = write_launcher(tmp_path / "clientapp-gate", warm=True)
    done = subprocess.run(
        [sys.executable, "-m", "client.clientapp_zygote", str(folder / ZYGOTE_SOCKET)]
        + ["--parent-pid", str(os.getpid()), "--preload", module],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and refusal in done.stderr, done.stderr[-2000:]
    assert not (folder / ZYGOTE_SOCKET).exists()
