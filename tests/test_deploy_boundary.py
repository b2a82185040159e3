"""The coordinator's and the hospital's trust boundary, replayed against the deployment as shipped (loopback).

One coordinator started by ``deploy/superlink.sh`` (SuperLink on 127.0.0.1 only, SuperExec secret, nginx on the
public port forwarding only the Fleet API and /health) and two hospitals started by ``nasofl-site join`` through
the public port, each with its own approved-apps file. An outsider holds only ``ca.crt`` (a fresh Flower home):

- ``flwr run`` of an arbitrary app, ``flwr supernode register`` of its own key, ``flwr supernode unregister`` of
  a hospital's node and ``flwr ls`` through the public port are all refused, and nothing changed on the SuperLink;
- ``list-runs`` with TLS verification off, a path that climbs out of ``/v1/fleet/``, the Runtime API and the
  OpenAPI pages get 404 from the proxy;
- a local process asking the SuperLink's Runtime API for the ServerApp's task (``AcquireTask``, as Flower's
  SuperExec does) without the SuperExec secret gets 401; the same call with the secret is accepted;
- the coordinator's run of an app approved by hospital-a only: hospital-a's ClientApp runs, hospital-b refuses it
  at the node (log line, no ClientApp code ran) and the ServerApp receives "app not approved by site hospital-b";
  a copy of the approved app with one changed byte is refused by both. hospital-b runs as the sandboxed
  systemd units would: ``join --isolation process`` plus ``nasofl-site clientapp-exec`` (its SuperNode's Runtime
  API refuses a local process without the site's SuperExec secret). Both sites start their ClientApps warm (the
  zygote that ``join`` / ``clientapp-exec`` start beside Flower): the refusal happens in the zygote's forked child.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest

from client.approval import app_fab, fab_sha256
from client.node_cmd import check_superlink
from tests.test_deploy_superlink import BIN, REPO, flwr_env, free_port, make_hospitals, stop_groups, tail

pytestmark = pytest.mark.slow

ECHO_APP = REPO / "tests" / "apps" / "echoapp"
SITES = ("hospital-a", "hospital-b")


def refused(cmd: list[str], env: dict[str, str]) -> str:
    """Run a flwr command that the proxy must refuse: failure (exit code, or ``"success": false`` in JSON mode)
    with the proxy's 404 for a Control API route in its output."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 or '"success": false' in said, f"{cmd} was accepted:\n{said}"
    assert "404 Not Found" in said and "/v1/control/" in said, (
        f"{cmd}: refused, but not by the proxy:\n{said}"
    )
    return said


def ok(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def post_status(url: str, context: ssl.SSLContext, body: bytes = b"") -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/protobuf"}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def acquire_task(port: int, ca: Path | None, secret: bytes | None, task_type: str = "flwr-serverapp"):
    """What Flower's SuperExec sends to take a task (``AcquireTask``), with or without the secret; TLS with ``ca``,
    plain HTTP (a SuperNode's local Runtime API) without."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        methods = frozenset({"/flwr.proto.Runtime/AcquireTask"})
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=methods))
    client = RuntimeHttpClient.from_server_address(
        f"127.0.0.1:{port}",
        insecure=ca is None,
        root_certificates=ca.read_bytes() if ca else None,
        interceptors=interceptors,
    )
    try:
        return client.AcquireTask(AcquireTaskRequest(supported_task_types=[task_type]))
    finally:
        client.close()


def raw_status(port: int, ca: Path, request_line: str) -> int:
    """Status of a hand-written request (urllib would normalise the path)."""
    import socket

    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(
                f"{request_line}\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            head = tls.recv(200).decode(errors="replace")
    return int(head.split()[1])


def test_only_the_coordinator_starts_runs_and_only_approved_apps_run_at_a_site(tmp_path):
    certs, keys, data = tmp_path / "certs", tmp_path / "keys", tmp_path / "data"
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.run(
        ["bash", str(REPO / "deploy/certs.sh"), str(certs), "localhost"], check=True, capture_output=True
    )
    for name in (*SITES, "outsider"):
        subprocess.run(
            ["bash", str(REPO / "deploy/node-keys.sh"), str(keys), name], check=True, capture_output=True
        )
    make_hospitals(data, len(SITES))
    public, internal = free_port(), free_port()
    ca = certs / "ca.crt"

    def home(name: str, address: str) -> dict[str, str]:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        (folder / "config.toml").write_text(
            f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "{address}"\nroot-certificates = "{ca}"\n'
        )
        return flwr_env(folder)

    coordinator = home("coordinator-flwr", f"127.0.0.1:{internal}")  # on the coordinator's host
    outsider = home("outsider-flwr", f"127.0.0.1:{public}")  # anyone else: only ca.crt and the public port

    # the hospitals' review: hospital-a approves the echo app, hospital-b approves another app (nasofl)
    approved = {site: tmp_path / f"{site}-approved-apps.txt" for site in SITES}
    shown = ok([str(BIN / "nasofl-site"), "approve", str(ECHO_APP), "--approved-apps", str(approved["hospital-a"])], coordinator)  # fmt: skip
    echo_sha = fab_sha256(app_fab(ECHO_APP))
    assert shown.startswith(echo_sha) and "approved" in shown
    ok([str(BIN / "nasofl-site"), "approve", str(REPO), "--approved-apps", str(approved["hospital-b"])], coordinator)  # fmt: skip
    assert echo_sha not in approved["hospital-b"].read_text()

    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(logs / f"{name}.log", "w") as fh:
            procs[name] = subprocess.Popen(
                cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
            )

    def all_logs() -> str:
        return "\n".join(f"==== {p.name}\n{tail(p)}" for p in sorted(logs.glob("*.log")))

    def alive() -> None:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}\n" + all_logs()

    def coordinator_run(app: Path, out: Path, marker: Path) -> dict:
        marker.mkdir()
        config = f'out="{out}" marker="{marker}" nodes=2'
        started = json.loads(ok([str(BIN / "flwr"), "run", str(app), "fed", "--run-config", config, "--format", "json"], coordinator))  # fmt: skip
        deadline = time.time() + 300
        while not out.exists():
            alive()
            assert time.time() < deadline, f"run {started['run-id']} wrote no {out}\n" + all_logs()
            time.sleep(1)
        return json.loads(out.read_text())

    try:
        start_env = flwr_env(tmp_path / "superlink-home")
        start_env.update(
            NASOFL_PUBLIC_HOST="127.0.0.1",
            NASOFL_PUBLIC_PORT=str(public),
            NASOFL_SUPERLINK_PORT=str(internal),
        )
        start("coordinator", ["bash", str(REPO / "deploy/superlink.sh"), str(certs), str(tmp_path / "state")], start_env)  # fmt: skip
        deadline = time.time() + 60
        while not check_superlink(f"127.0.0.1:{public}", ca, timeout=2)[0]:
            alive()
            assert time.time() < deadline, "the proxy's /health never answered\n" + all_logs()
            time.sleep(0.5)
        secret = tmp_path / "state" / "superexec.secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64
        for site in SITES:
            ok([str(BIN / "flwr"), "supernode", "register", str(keys / f"{site}.pub"), "fed", "--name", site], coordinator)  # fmt: skip
        runtime_port = {site: free_port() for site in SITES}
        for site in SITES:
            # hospital-b: its ClientApps come from a separate executor (their own sandbox in deployment)
            isolation = ["--isolation", "process"] if site == "hospital-b" else []
            start(
                site,
                [
                    str(BIN / "nasofl-site"),
                    "join",
                    str(data / site),
                    "--superlink",
                    f"127.0.0.1:{public}",
                    "--ca",
                    str(ca),
                    "--key",
                    str(keys / site),
                    "--approved-apps",
                    str(approved[site]),
                    "--cache",
                    str(tmp_path / "cache" / site),
                    "--runtime-port",
                    str(runtime_port[site]),
                    "--no-progress",
                    *isolation,
                ],  # fmt: skip
                flwr_env(tmp_path / f"{site}-home"),
            )
        secret_b = tmp_path / "cache" / "hospital-b" / "superexec.secret"
        deadline = time.time() + 120
        while not secret_b.exists():
            alive()
            assert time.time() < deadline, "hospital-b's join made no superexec.secret\n" + all_logs()
            time.sleep(0.5)
        start(
            "hospital-b-exec",
            [
                str(BIN / "nasofl-site"),
                "clientapp-exec",
                "--approved-apps",
                str(approved["hospital-b"]),
                "--cache",
                str(tmp_path / "cache" / "hospital-b"),
                "--site-name",
                "hospital-b",
                "--runtime-port",
                str(runtime_port["hospital-b"]),
            ],  # fmt: skip
            flwr_env(tmp_path / "hospital-b-exec-home"),
        )

        def nodes() -> dict[str, str]:
            """{node id: status} as the coordinator sees them."""
            listed = json.loads(
                ok([str(BIN / "flwr"), "supernode", "list", "fed", "--format", "json"], coordinator)
            )
            return {n["node-id"]: n["status"] for n in listed["nodes"]}

        deadline = time.time() + 180
        while sorted(nodes().values()) != ["online", "online"]:
            alive()
            assert time.time() < deadline, f"hospitals not online through the proxy: {nodes()}\n" + all_logs()
            time.sleep(2)
        before = nodes()
        node_of = {
            site: re.findall(r"SuperNode ID: (\d+)", tail(logs / f"{site}.log", 200_000))[0] for site in SITES
        }
        assert set(node_of.values()) == set(before), (node_of, before)

        # --- the outsider, through the public port, with only ca.crt ---
        said = refused([str(BIN / "flwr"), "run", str(ECHO_APP), "fed", "--format", "json"], outsider)
        said += refused([str(BIN / "flwr"), "supernode", "register", str(keys / "outsider.pub"), "fed", "--name", "outsider"], outsider)  # fmt: skip
        said += refused(
            [str(BIN / "flwr"), "supernode", "unregister", node_of["hospital-a"], "fed"], outsider
        )
        said += refused([str(BIN / "flwr"), "ls", "fed"], outsider)
        assert "successfully" not in said, said
        runs = json.loads(ok([str(BIN / "flwr"), "ls", "fed", "--format", "json"], coordinator))
        assert runs["runs"] == [], f"an outsider's run was created: {runs}"
        after = nodes()
        assert after == before, f"the outsider changed the registered nodes: {before} -> {after}"
        unverified = ssl.create_default_context()
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/control/register-node",
                     "/v1/runtime/acquire-task", "/v1/runtime/pull-task-input"):  # fmt: skip
            assert post_status(f"https://127.0.0.1:{public}{path}", unverified) == 404, path
        for path in ("/docs", "/openapi.json"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"https://127.0.0.1:{public}{path}", context=unverified, timeout=10)
            assert err.value.code == 404
        assert raw_status(public, ca, "POST /v1/fleet/../control/list-runs HTTP/1.1") in (400, 404)
        assert raw_status(public, ca, "POST /v1/fleet/%2e%2e/control/list-runs HTTP/1.1") in (400, 404)
        # the Fleet API itself answers through the proxy (an unauthenticated call is Flower's own refusal)
        assert post_status(f"https://127.0.0.1:{public}/v1/fleet/get-run", unverified) not in (404, 502)

        # --- a local process polls the Runtime API for the ServerApp's task, without the SuperExec secret ---
        with pytest.raises(httpx.HTTPStatusError) as err:
            acquire_task(internal, ca, secret=None)
        assert err.value.response.status_code == 401
        with_secret = acquire_task(internal, ca, secret.read_bytes())  # the same call, with the secret
        assert not with_secret.HasField("task")  # accepted (no run pending yet)
        # ... and at hospital-b (process isolation), a local process asking its SuperNode for ClientApp tasks
        with pytest.raises(httpx.HTTPStatusError) as err:
            acquire_task(runtime_port["hospital-b"], None, None, "flwr-clientapp")
        assert err.value.response.status_code == 401

        # --- the coordinator's run: approved by hospital-a, not by hospital-b ---
        result = coordinator_run(ECHO_APP, tmp_path / "echo.json", tmp_path / "ran")
        replies = result["replies"]
        assert len(replies) == 2, result
        assert replies[node_of["hospital-a"]] == "ok", replies
        assert "app not approved by site hospital-b" in replies[node_of["hospital-b"]], replies
        assert [p.name for p in (tmp_path / "ran").iterdir()] == [node_of["hospital-a"]], (
            "an unapproved ClientApp ran"
        )
        node_b = tail(logs / "hospital-b-exec.log", 200_000)
        assert f"REFUSED: app not approved by site hospital-b: FAB sha256 {echo_sha}" in node_b, node_b[
            -3000:
        ]
        assert f"app FAB sha256 {echo_sha} is approved by site hospital-a" in tail(
            logs / "hospital-a.log", 200_000
        )
        # both went through the warm start (the site's zygote forked the gate), none fell back cold
        node_a = tail(logs / "hospital-a.log", 200_000)
        for log in (node_a, node_b):
            assert "warm ClientApp start: process" in log and "starting cold" not in log, log[-3000:]
        assert "nasofl: ClientApp start-up (warm)" in node_a, node_a[-3000:]

        # --- the same app with one changed byte: refused by both sites ---
        modified = tmp_path / "echoapp"
        shutil.copytree(ECHO_APP, modified)
        with open(modified / "echoapp" / "client.py", "a") as fh:
            fh.write("# changed\n")
        result = coordinator_run(modified, tmp_path / "modified.json", tmp_path / "ran-modified")
        assert {
            node: ("app not approved by site " + site) in result["replies"].get(node, "")
            for site, node in node_of.items()
        } == {node: True for node in node_of.values()}, result
        assert not any((tmp_path / "ran-modified").iterdir()), "a modified ClientApp ran"
    finally:
        stop_groups(list(procs.values()))
