"""A real Flower 1.42 deployment on loopback, built with the deploy/ kit:

- deploy/certs.sh (CA + server cert with IP:127.0.0.1/DNS:localhost SANs) and deploy/node-keys.sh (ECDSA P-384),
- ``flower-superlink`` with TLS, ``--enable-supernode-auth`` and ``--database``,
- ``flwr supernode register`` for both keys (CLI config.toml with root-certificates in a temp FLWR_HOME),
- ``nasofl-site join --check`` (TLS self-test), then two ``nasofl-site join`` SuperNodes (validation, then exec of
  flower-supernode) on synthetic toy hospitals,
- ``flwr run <repo> <connection>`` at the toy size of tests/test_fed_simulation.py, polled with
  ``flwr ls --format json`` until finished; the study's STATUS must be COMPLETED.

Every process is started in its own session and killed by its saved PID (process group) in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.node_cmd import check_superlink
from server.run_log import read_run_log
from simulations.run_cmd import run_config_arg
from simulations.scenarios import _TOY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SITES = ("hospital-a", "hospital-b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flwr_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_ok(cmd: list[str], env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} missing)"


def make_hospitals(data: Path) -> None:
    from shared.data.synth.cohort import CohortConfig, generate_cohort
    from shared.data.synth.site_profile import GridPreset
    from simulations.cohort_loading import TOY_GRID_ARGS

    config = CohortConfig(sites=2, patients_per_site=(6, 6), seed=11, grid=GridPreset(**TOY_GRID_ARGS))
    generate_cohort(data, config, progress=False)


def test_tls_authenticated_deployment_runs_the_toy_study(tmp_path):
    t_start = time.time()
    certs, keys, data, out = tmp_path / "certs", tmp_path / "keys", tmp_path / "data", tmp_path / "out"
    coord_home, logs = tmp_path / "coord-flwr", tmp_path / "logs"
    logs.mkdir()
    subprocess.run(
        ["bash", str(REPO / "deploy/certs.sh"), str(certs), "localhost"], check=True, capture_output=True
    )
    for site in SITES:
        shown = subprocess.run(
            ["bash", str(REPO / "deploy/node-keys.sh"), str(keys), site],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert f"flwr supernode register {site}.pub CONNECTION --name {site}" in shown
    make_hospitals(data)
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith("_")) == list(SITES)

    port = free_port()
    address = f"127.0.0.1:{port}"
    coord_home.mkdir()
    (coord_home / "config.toml").write_text(
        '[superlink]\ndefault = "nasofl-test"\n\n'
        f'[superlink.nasofl-test]\naddress = "{address}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    env = flwr_env(coord_home)
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, cmd: list[str], proc_env: dict[str, str]) -> None:
        with open(logs / f"{name}.log", "w") as fh:
            procs[name] = subprocess.Popen(
                cmd, env=proc_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
            )

    def all_logs() -> str:
        return "\n".join(f"==== {p.name}\n{tail(p)}" for p in sorted(logs.glob("*.log")))

    try:
        start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(certs / "ca.crt"),
                "--ssl-certfile",
                str(certs / "server.pem"),
                "--ssl-keyfile",
                str(certs / "server.key"),
                "--enable-supernode-auth",
                "--database",
                str(tmp_path / "state.db"),
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],  # fmt: skip
            flwr_env(tmp_path / "superlink-home"),
        )
        deadline = time.time() + 60
        while not check_superlink(address, certs / "ca.crt", timeout=2)[0]:
            assert procs["superlink"].poll() is None, all_logs()
            assert time.time() < deadline, "SuperLink /health never answered\n" + all_logs()
            time.sleep(0.5)
        # the hospital's self-test, through the CLI
        shown = run_ok([str(BIN / "nasofl-site"), "join", "--check", "--superlink", address, "--ca", str(certs / "ca.crt")], env)  # fmt: skip
        assert shown.startswith("OK: ")
        for site in SITES:
            shown = run_ok([str(BIN / "flwr"), "supernode", "register", str(keys / f"{site}.pub"), "nasofl-test", "--name", site], env)  # fmt: skip
            assert "registered successfully" in shown, shown

        for site in SITES:
            start(
                site,
                [
                    str(BIN / "nasofl-site"),
                    "join",
                    str(data / site),
                    "--superlink",
                    address,
                    "--ca",
                    str(certs / "ca.crt"),
                    "--key",
                    str(keys / site),
                    "--cache",
                    str(tmp_path / "cache" / site),
                    "--runtime-port",
                    str(free_port()),
                    "--no-progress",
                ],  # fmt: skip
                flwr_env(tmp_path / f"{site}-home"),
            )
        values = dict(_TOY)
        values["out-dir"] = str(out)
        values["wait-for-sites-s"] = 180.0
        started = json.loads(
            run_ok(
                [
                    str(BIN / "flwr"),
                    "run",
                    str(REPO),
                    "nasofl-test",
                    "--run-config",
                    run_config_arg(values),
                    "--format",
                    "json",
                ],
                env,
            )  # fmt: skip
        )
        run_id = str(started["run-id"])
        t_run = time.time()
        status = ""
        while time.time() - t_run < 900:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited with {proc.returncode}\n" + all_logs()
            listing = json.loads(
                run_ok([str(BIN / "flwr"), "ls", "nasofl-test", "--run-id", run_id, "--format", "json"], env)
            )
            status = str(listing["runs"][0]["status"])
            if status.startswith("finished"):
                break
            time.sleep(5)
        run_seconds = time.time() - t_run
        assert status == "finished:completed", f"run {run_id} status {status!r}\n" + all_logs()
        assert (out / "STATUS").read_text().startswith("COMPLETED"), tail(out / "STATUS") + all_logs()
        results = json.loads((out / "results.json").read_text())
        assert results["mode"] == "federated" and set(results["sites"]) == set(SITES)
        rounds = [x for x in read_run_log(out / "run-log.jsonl") if x["event"] == "round"]
        assert [(x["stage"], x["dataset"]) for x in rounds] == [("seg", ""), ("cls", "t2"), ("cls", "t1+t2")]
        assert all(x["sites_contributed"] == list(SITES) for x in rounds)
        listed = json.loads(
            run_ok([str(BIN / "flwr"), "supernode", "list", "nasofl-test", "--format", "json"], env)
        )
        assert sorted(n["status"] for n in listed["nodes"]) == ["online", "online"], listed
        metrics = run_ok(
            [str(BIN / "nasofl-coord"), "exporter", "--run-log", str(out / "run-log.jsonl"), "--once"], env
        )
        assert 'nasofl_server_rounds_completed_total{dataset="",stage="seg"} 1.0' in metrics
        assert 'nasofl_server_study_status_info{status="COMPLETED"} 1.0' in metrics
        print(f"deployment test: run {run_seconds:.0f} s, total {time.time() - t_start:.0f} s")
    finally:
        stop_groups(list(procs.values()))


def stop_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each started process's own group (its PID), then SIGKILL what is left of those groups."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
