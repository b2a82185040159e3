"""deploy/superlink.sh's ``NASOFL_SUPERLINK_STATE``: where the SuperLink keeps its state, and what a restart keeps.

Real ``flower-superlink`` (with its SuperExec and nginx) on 127.0.0.1, started twice per state kind: a node key
registered before the restart is still registered afterwards with ``sqlite`` (STATE_DIR/state.db) and is gone with
``memory`` (the default), which is the trade-off deploy/README.md documents. An unknown value is refused.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from client.node_cmd import check_superlink
from tests.test_deploy_superlink import BIN, REPO, flwr_env, free_port, stop_groups, tail

pytestmark = pytest.mark.slow


def start_coordinator(
    root: Path, state: str | None, logs: Path, internal: int, public: int
) -> subprocess.Popen:
    env = flwr_env(root / "superlink-home")
    env.update(
        NASOFL_PUBLIC_HOST="127.0.0.1", NASOFL_PUBLIC_PORT=str(public), NASOFL_SUPERLINK_PORT=str(internal)
    )
    if state is not None:
        env["NASOFL_SUPERLINK_STATE"] = state
    with open(logs, "a") as fh:
        proc = subprocess.Popen(
            ["bash", str(REPO / "deploy/superlink.sh"), str(root / "certs"), str(root / "state")],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 60
    while not check_superlink(f"127.0.0.1:{public}", root / "certs" / "ca.crt", timeout=2)[0]:
        assert proc.poll() is None, tail(logs)
        assert time.time() < deadline, "SuperLink /health never answered\n" + tail(logs)
        time.sleep(0.5)
    return proc


def flwr(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"flwr {args}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("state", [None, "sqlite"])
def test_a_restart_keeps_node_registrations_only_with_sqlite_state(tmp_path: Path, state: str | None) -> None:
    subprocess.run(["bash", str(REPO / "deploy/certs.sh"), str(tmp_path / "certs"), "localhost"], check=True, capture_output=True)  # fmt: skip
    subprocess.run(["bash", str(REPO / "deploy/node-keys.sh"), str(tmp_path / "keys"), "hospital-a"], check=True, capture_output=True)  # fmt: skip
    internal, public = free_port(), free_port()
    home = tmp_path / "cli"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "127.0.0.1:{internal}"\n'
        f'root-certificates = "{tmp_path / "certs" / "ca.crt"}"\n'
    )
    env = flwr_env(home)
    logs = tmp_path / "coordinator.log"
    proc = start_coordinator(tmp_path, state, logs, internal, public)
    try:
        shown = flwr(env, "supernode", "register", str(tmp_path / "keys" / "hospital-a.pub"), "fed", "--name", "hospital-a")  # fmt: skip
        node_id = re.search(r"SuperNode (\d+) registered successfully", shown)
        assert node_id, shown
        assert node_id[1] in flwr(env, "supernode", "list", "fed", "--format", "json")
        stop_groups([proc])
        proc = start_coordinator(tmp_path, state, logs, internal, public)
        listing = flwr(env, "supernode", "list", "fed", "--format", "json")
    finally:
        stop_groups([proc])
    shown = logs.read_text(errors="replace")  # whole: on a busy machine health checks push the start lines out of a tail
    if state == "sqlite":
        assert (tmp_path / "state" / "state.db").is_file()
        assert f"state {tmp_path / 'state' / 'state.db'}" in shown
        assert node_id[1] in listing, listing
    else:
        assert not (tmp_path / "state" / "state.db").exists()
        assert "state in memory: node registrations are lost on restart" in shown
        assert node_id[1] not in listing, listing


def test_an_unknown_state_kind_is_refused(tmp_path: Path) -> None:
    subprocess.run(["bash", str(REPO / "deploy/certs.sh"), str(tmp_path / "certs"), "localhost"], check=True, capture_output=True)  # fmt: skip
    env = flwr_env(tmp_path / "home")
    env.update(NASOFL_SUPERLINK_STATE="disk", NASOFL_SUPERLINK_PORT=str(free_port()), NASOFL_PUBLIC_PORT=str(free_port()))  # fmt: skip
    done = subprocess.run(
        ["bash", str(REPO / "deploy/superlink.sh"), str(tmp_path / "certs"), str(tmp_path / "state")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "NASOFL_SUPERLINK_STATE=disk is not one of: memory, sqlite" in done.stderr
