"""A real Flower 1.42 deployment on loopback, built with the deploy/ kit:

- deploy/certs.sh (CA + server cert with IP:127.0.0.1/DNS:localhost SANs) and deploy/node-keys.sh (ECDSA P-384),
- the coordinator as deploy/superlink.sh starts it: ``flower-superlink`` on 127.0.0.1 only (TLS,
  ``--enable-supernode-auth``, ``--database``, ``--isolation process`` + SuperExec secret), its ``flower-superexec``
  and the nginx proxy on the public port (Fleet API and /health only),
- ``flwr supernode register`` for the three keys through the SuperLink's loopback port (CLI config.toml with
  root-certificates in a temp FLWR_HOME),
- ``nasofl-site join --check`` (TLS self-test through the proxy), ``nasofl-site approve`` of this repository at each
  site, then three ``nasofl-site join`` SuperNodes (validation, then exec of flower-supernode behind the
  approved-apps gate) on synthetic toy hospitals, connected to the proxy's public port,
- ``flwr run <repo> <connection>`` at the toy size of tests/test_fed_simulation.py, polled with
  ``flwr ls --format json`` until finished; the study's STATUS must be COMPLETED.
- a site crash: hospital-c's SuperNode is killed (SIGKILL to its process group: no goodbye to the SuperLink)
  while its ClientApp trains the segmenter. Flower 1.42 has no reply for that message until the SuperLink
  declares the node unavailable (no heartbeat for HEARTBEAT_PATIENCE x 30 s = 60 s); it then answers for it
  with error code 5 (NODE_UNAVAILABLE), so the round ends with the other two sites (min-sites 2) long before
  ``round-timeout-s``. hospital-c is restarted with the same node key, data and cache: same node id; the study
  logs it back (``site-joined``, rejoined) and it trains in a later round.

Every process is started in its own session and killed by its saved PID (process group) in ``finally``.
"""

from __future__ import annotations

import csv
import json
import os
import re
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
SITES = ("hospital-a", "hospital-b", "hospital-c")
CRASHED = "hospital-c"
ROUND_TIMEOUT_S = 300.0  # far above the SuperLink's 60 s heartbeat patience: a round ending early proves it


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


def join_command(site_dir: Path, address: str, ca: Path, key: Path, approved: Path, cache: Path) -> list[str]:
    """``nasofl-site join`` of one hospital as the runbook has it (TLS, node key, approved apps, own cache)."""
    return [
        str(BIN / "nasofl-site"),
        "join",
        str(site_dir),
        "--superlink",
        address,
        "--ca",
        str(ca),
        "--key",
        str(key),
        "--approved-apps",
        str(approved),
        "--cache",
        str(cache),
        "--runtime-port",
        str(free_port()),
        "--no-progress",
    ]


def make_hospitals(data: Path, sites: int = 3) -> None:
    """``sites`` synthetic toy hospitals (hospital-a, hospital-b, ...) of 6 patients each under ``data``."""
    from simulations.cohort_loading import TOY_GRID_ARGS
    from simulations.synth.cohort import CohortConfig, generate_cohort
    from simulations.synth.site_profile import GridPreset

    config = CohortConfig(
        sites=sites, patients_per_site=(6,) * sites, seed=11, grid=GridPreset(**TOY_GRID_ARGS)
    )
    generate_cohort(data, config, progress=False)


def patient_ids(data: Path) -> set[str]:
    ids = set()
    for site in SITES:
        with open(data / site / "labels.csv") as fh:
            ids |= {row[0].strip() for row in csv.reader(fh) if row and row[0] and row[0] != "patient_id"}
    assert len(ids) == 18
    return ids


def test_tls_authenticated_deployment_runs_the_toy_study_through_a_site_crash(tmp_path):
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

    port, internal = free_port(), free_port()
    address = f"127.0.0.1:{port}"  # the proxy: what hospitals use
    coord_home.mkdir()
    (coord_home / "config.toml").write_text(
        '[superlink]\ndefault = "nasofl-test"\n\n'
        f'[superlink.nasofl-test]\naddress = "127.0.0.1:{internal}"\nroot-certificates = "{certs / "ca.crt"}"\n'
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

    def run_status(run_id: str) -> str:
        listing = json.loads(
            run_ok([str(BIN / "flwr"), "ls", "nasofl-test", "--run-id", run_id, "--format", "json"], env)
        )
        return f"{listing['runs'][0]['status']} {listing['runs'][0].get('status-details', '')}"

    def wait_for(what: str, check, run_id: str, timeout: float = 600, every: float = 1.0):
        """Poll ``check()`` until it returns something truthy; every started process must stay up meanwhile,
        and the run must not have finished (asked every 10 s: ``flwr ls`` costs a second of CPU)."""
        deadline = time.time() + timeout
        asked = time.time()
        while not (found := check()):
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited with {proc.returncode}\n" + all_logs()
            assert time.time() < deadline, f"{what}: not within {timeout:.0f} s\n" + all_logs()
            if time.time() - asked > 10:
                status = run_status(run_id)
                assert not status.startswith("finished"), f"{what}: the run ended ({status})\n" + all_logs()
                asked = time.time()
            time.sleep(every)
        return found

    def join(site: str, log_name: str) -> None:
        start(
            log_name,
            join_command(
                data / site, address, certs / "ca.crt", keys / site, approved, tmp_path / "cache" / site
            ),
            flwr_env(tmp_path / f"{log_name}-home"),
        )

    def run_log_lines() -> list[dict]:
        return read_run_log(out / "run-log.jsonl")

    dead: list[subprocess.Popen] = []

    approved = tmp_path / "approved-apps.txt"  # every site reviewed this repository's app
    run_ok([str(BIN / "nasofl-site"), "approve", str(REPO), "--approved-apps", str(approved)], env)

    try:
        coordinator_env = flwr_env(tmp_path / "superlink-home")
        coordinator_env.update(
            NASOFL_PUBLIC_HOST="127.0.0.1", NASOFL_PUBLIC_PORT=str(port), NASOFL_SUPERLINK_PORT=str(internal)
        )
        start(
            "superlink",
            ["bash", str(REPO / "deploy/superlink.sh"), str(certs), str(tmp_path / "state")],
            coordinator_env,
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
            join(site, site)
        values = dict(_TOY)
        values["out-dir"] = str(out)
        values["wait-for-sites-s"] = 180.0
        values["min-sites"] = 2
        values["round-timeout-s"] = ROUND_TIMEOUT_S
        values["datasets"] = "t2"  # one classifier, two rounds: hospital-c has two chances to be back in time
        values["cls-rounds"] = 2
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

        # the crash: hospital-c's SuperNode dies while it holds its train.seg message (no reply will come)
        wait_for("hospital-c receives train.seg", lambda: "Receiving: train.seg" in tail(logs / f"{CRASHED}.log", 100_000), run_id, every=0.2)  # fmt: skip
        crashed = procs.pop(CRASHED)
        os.killpg(crashed.pid, signal.SIGKILL)
        crashed.wait(timeout=30)
        dead.append(crashed)
        t_kill = time.time()
        seg = wait_for(
            "seg round 1 line", lambda: [x for x in run_log_lines() if x["event"] == "round"], run_id
        )[0]
        detected_s = (
            seg["unix"] - seg["seconds_round"] + seg["seconds_train_phase"] - t_kill
        )  # kill -> replies
        assert seg["stage"] == "seg" and seg["sites_contributed"] == ["hospital-a", "hospital-b"], seg
        assert list(seg["sites_failed"]) == [CRASHED], seg
        reason = seg["sites_failed"][CRASHED]
        assert "code 5" in reason and "Node Unavailable" in reason, f"{reason!r}: not the SuperLink's answer"
        assert seg["seconds_round"] < ROUND_TIMEOUT_S - 30, "the round waited for round-timeout-s"
        assert [x["site"] for x in run_log_lines() if x["event"] == "site-offline"] == [CRASHED]

        # the same hospital comes back: same key (so the same node id), same data and cache
        join(CRASHED, f"{CRASHED}-restarted")
        status = ""
        while time.time() - t_run < 900:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited with {proc.returncode}\n" + all_logs()
            status = run_status(run_id).split()[0]
            if status.startswith("finished"):
                break
            time.sleep(5)
        run_seconds = time.time() - t_run
        assert status == "finished:completed", f"run {run_id}: {run_status(run_id)}\n" + all_logs()
        assert (out / "STATUS").read_text().startswith("COMPLETED"), tail(out / "STATUS") + all_logs()
        results = json.loads((out / "results.json").read_text())
        assert results["mode"] == "federated" and set(results["sites"]) == set(SITES)
        lines = run_log_lines()
        rounds = [x for x in lines if x["event"] == "round"]
        assert [(x["stage"], x["dataset"], x["round"]) for x in rounds] == [("seg", "", 1), ("cls", "t2", 1), ("cls", "t2", 2)]  # fmt: skip
        assert all(x["sites_contributed"][:2] == ["hospital-a", "hospital-b"] for x in rounds)
        assert any(CRASHED in x["sites_contributed"] for x in rounds[1:]), "hospital-c never trained again"
        back = [x for x in lines if x["event"] == "site-joined"]
        assert [(x["site"], x["rejoined"]) for x in back] == [(CRASHED, True)], back
        text = (out / "run-log.jsonl").read_text()
        assert not any(pid in text for pid in patient_ids(data)) and "Synthetic^" not in text
        listed = json.loads(
            run_ok([str(BIN / "flwr"), "supernode", "list", "nasofl-test", "--format", "json"], env)
        )
        assert sorted(n["status"] for n in listed["nodes"]) == ["online"] * 3, listed
        ids = [re.findall(r"SuperNode ID: (\d+)", tail(logs / f"{name}.log", 100_000)) for name in (CRASHED, f"{CRASHED}-restarted")]  # fmt: skip
        assert ids[0] and ids[0] == ids[1], f"node ids before / after the restart: {ids}"
        metrics = run_ok(
            [str(BIN / "nasofl-coord"), "exporter", "--run-log", str(out / "run-log.jsonl"), "--once"], env
        )
        assert 'nasofl_server_rounds_completed_total{dataset="",stage="seg"} 1.0' in metrics
        assert 'nasofl_server_study_status_info{status="COMPLETED"} 1.0' in metrics
        print(
            f"deployment test: run {run_seconds:.0f} s, total {time.time() - t_start:.0f} s; "
            f"the training phase ended {detected_s:.0f} s after the SuperNode was killed"
        )
    finally:
        stop_groups(list(procs.values()) + dead)


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
