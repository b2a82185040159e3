"""The deploy/ kit without a running federation: certificate and key scripts (real openssl / ssh-keygen),
``nasofl-site join`` (validation gate, --dry-run command, --check failures), and the files that cannot run here
(Docker compose, Prometheus rules, Grafana dashboard): they parse, name files that exist, and use only metric
names the exporter really serves."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from server.exporter_cmd import build_registry
from tests.test_deploy_exporter import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def sh(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, check=check)


def test_certs_have_loopback_sans_and_are_not_overwritten(tmp_path):
    out = tmp_path / "certs"
    sh(DEPLOY / "certs.sh", out, "fl.example.org", "203.0.113.7")
    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "203.0.113.7"}
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    assert cert.issuer == ca.subject
    assert (out / "server.key").stat().st_mode & 0o077 == 0
    before = (out / "ca.crt").read_bytes()
    again = sh(DEPLOY / "certs.sh", out, "other.example.org", check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert (out / "ca.crt").read_bytes() == before


def test_node_keys_are_p384_and_not_overwritten(tmp_path):
    done = sh(DEPLOY / "node-keys.sh", tmp_path / "keys", "hospital-a")
    pub = load_ssh_public_key((tmp_path / "keys" / "hospital-a.pub").read_bytes())
    assert pub.curve.name == "secp384r1"
    assert "flwr supernode register hospital-a.pub CONNECTION --name hospital-a" in done.stdout
    again = sh(DEPLOY / "node-keys.sh", tmp_path / "keys", "hospital-a", check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    bad = sh(DEPLOY / "node-keys.sh", tmp_path / "keys", "../x", check=False)
    assert bad.returncode == 2


def join(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "join", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_join_validates_first_then_prints_the_supernode_command(tmp_path):
    from simulations.cohort_loading import TOY_GRID_ARGS
    from simulations.synth.cohort import CohortConfig, generate_cohort
    from simulations.synth.site_profile import GridPreset

    generate_cohort(
        tmp_path / "data",
        CohortConfig(sites=1, patients_per_site=(4,), seed=3, grid=GridPreset(**TOY_GRID_ARGS)),
        progress=False,
    )
    site = next(p for p in (tmp_path / "data").iterdir() if not p.name.startswith(("_", ".")))
    ca, key, approved = tmp_path / "ca.crt", tmp_path / "key", tmp_path / "approved-apps.txt"
    ca.write_text("x")
    key.write_text("x")
    approved.write_text("# reviewed 2026-11-30\n" + "ab" * 32 + "  nasofl 0.1.0\n")
    base = ["--superlink", "fl.example.org:8000", "--ca", ca, "--key", key, "--no-progress"]
    cache = tmp_path / "cache dir"
    done = join(
        site, *base, "--approved-apps", approved, "--cache", cache, "--eval-only", "--runtime-port", "9195",
        "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    shown = done.stdout.strip().splitlines()
    gate = cache.resolve() / "clientapp-gate"
    assert shown[-2] == f"would run (PATH starts with {gate}):"
    launcher = (gate / "flwr-clientapp").read_text()  # warm start through the zygote (isolation subprocess)
    assert " -I -S " in launcher and launcher.endswith(
        f"clientapp_launcher.py' '{gate / 'zygote.sock'}' \"$@\"\n"
    )
    assert gate.stat().st_mode & 0o777 == 0o700
    words = shlex.split(shown[-1])
    assert words[:6] == [
        "FLWR_TELEMETRY_ENABLED=0",
        "FLWR_DISABLE_UPDATE_CHECK=1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.2",
        f"NASOFL_APPROVED_APPS={approved.resolve()}",
        f"NASOFL_SITE_NAME={site.name}",
    ]
    cmd = words[6:]
    assert cmd[1:3] == ["-m", "client.supernode_launch"]  # Flower's flower-supernode, shorter idle poll
    cmd = cmd[2:]
    opts = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert opts["--superlink"] == "fl.example.org:8000" and opts["--root-certificates"] == str(ca.resolve())
    assert opts["--auth-supernode-private-key"] == str(key.resolve()) and opts["--port"] == "9195"
    assert opts["--node-config"] == (
        f'data-path="{site.resolve()}" cache-path="{cache.resolve()}" eval-only=true'
    )  # no salt in the node config (it shows in `ps`): the ClientApp reads <cache>/pseudonym-salt
    assert (cache / "pseudonym-salt").stat().st_mode & 0o777 == 0o600
    # no approved-apps file, an empty one, or the public default salt: refused before validation
    no_list = join(site, *base, "--dry-run")
    assert no_list.returncode == 2 and "--approved-apps FILE is required" in no_list.stderr
    empty_list = tmp_path / "empty-list.txt"
    empty_list.write_text("# nothing reviewed yet\n")
    nothing = join(site, *base, "--approved-apps", empty_list, "--dry-run")
    assert nothing.returncode == 2 and "no approved app listed" in nothing.stderr, nothing.stderr
    public_salt = join(site, *base, "--approved-apps", approved, "--salt", "nasofl-local-salt", "--dry-run")
    assert public_salt.returncode == 2 and "public default salt" in public_salt.stderr
    # blocking problems (no labels.csv): the report is printed and the SuperNode never starts
    empty = tmp_path / "empty-site"
    empty.mkdir()
    refused = join(empty, *base, "--approved-apps", approved, "--dry-run")
    assert (
        refused.returncode == 1
        and "not joining" in refused.stdout
        and "supernode_launch" not in refused.stdout
    )


def test_join_check_reports_unreachable_and_untrusted_superlinks(tmp_path):
    sh(DEPLOY / "certs.sh", tmp_path / "certs", "localhost")
    sh(DEPLOY / "certs.sh", tmp_path / "other", "localhost")
    # an HTTPS /health server whose certificate comes from another CA
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "other" / "server.pem", tmp_path / "other" / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"localhost:{server.server_address[1]}"
        trusted = join("--check", "--superlink", address, "--ca", tmp_path / "other" / "ca.crt")
        assert trusted.returncode == 0 and trusted.stdout.startswith("OK: "), trusted.stdout + trusted.stderr
        untrusted = join("--check", "--superlink", address, "--ca", tmp_path / "certs" / "ca.crt")
        assert untrusted.returncode == 1 and untrusted.stdout.startswith("FAILED: TLS check failed"), (
            untrusted.stdout
        )
    finally:
        server.shutdown()
        server.server_close()
    port = free_port()
    down = join("--check", "--superlink", f"127.0.0.1:{port}", "--ca", tmp_path / "certs" / "ca.crt")
    assert down.returncode == 1 and down.stdout.startswith("FAILED: cannot reach"), down.stdout
    missing = join("--check", "--superlink", f"127.0.0.1:{port}", "--ca", tmp_path / "nope.crt")
    assert missing.returncode == 1 and "not found" in missing.stdout
    bad = join("--check", "--superlink", "no-port", "--ca", tmp_path / "certs" / "ca.crt")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


class HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def exporter_metric_names() -> set[str]:
    names = set()
    for family in build_registry(Path("/nonexistent/run-log.jsonl")).collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_dashboard_and_alerts_use_only_exported_metrics():
    served = exporter_metric_names()
    dashboard = json.loads((DEPLOY / "grafana/dashboards/nasofl-study.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus/nasofl-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"nasofl_server_[a-z0-9_]+", e)}
    assert used and used <= served, used - served


def test_compose_files_parse_and_reference_existing_files():
    for name in ("coordinator.compose.yml", "hospital.compose.yml"):
        compose = yaml.safe_load((DEPLOY / "docker" / name).read_text())
        for svc_name, svc in compose["services"].items():
            build = svc.get("build")
            if build:
                context = (DEPLOY / "docker" / build["context"]).resolve()
                assert context == REPO and (context / build["dockerfile"]).is_file(), svc_name
            for vol in svc.get("volumes", []):
                src = vol.split(":")[0]
                if src.startswith("../"):
                    assert (DEPLOY / "docker" / src).exists(), f"{name} {svc_name}: {src} missing"
            image = svc.get("image", "")
            if image.startswith("flwr/"):
                assert image.endswith(":1.42.0"), image
                flags = " ".join(svc["command"])
                assert "--plugin-type" not in flags and "appio-api-address" not in flags  # pre-1.42 flags
    coordinator = yaml.safe_load((DEPLOY / "docker/coordinator.compose.yml").read_text())["services"]
    assert {"superlink", "serverapp-exec", "exporter", "prometheus", "grafana"} <= set(coordinator)
    assert "--enable-supernode-auth" in coordinator["superlink"]["command"]
    hospital = yaml.safe_load((DEPLOY / "docker/hospital.compose.yml").read_text())["services"]
    gpu = hospital["clientapp-exec"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    dockerfile = (DEPLOY / "docker/Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for item in src.split():
            assert (REPO / item).exists(), f"Dockerfile copies {item}, which does not exist"


def test_systemd_units_verify_with_the_install_paths_filled_in(tmp_path):
    """``systemd-analyze verify`` (unknown keys, bad values, missing executables) on each unit, with /opt/nasofl
    pointed at this checkout and its Python environment; the sandbox lines of the hospital units are there."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found (Debian package: systemd)"
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    for unit in units:
        text = unit.read_text().replace("/opt/nasofl/.venv/bin/", f"{Path(sys.executable).parent}/")
        (tmp_path / unit.name).write_text(text.replace("/opt/nasofl/src/", f"{REPO}/"))
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}  # the units find each other (BindsTo=, Wants=)
    for unit in units:
        done = subprocess.run(
            [analyze, "verify", str(tmp_path / unit.name)], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0 and not done.stderr.strip(), f"{unit.name}: {done.stderr}"
    clientapp = (DEPLOY / "systemd/nasofl-clientapp.service").read_text()
    for line in ("IPAddressDeny=any", "IPAddressAllow=localhost", "ProtectSystem=strict", "InaccessiblePaths=/etc/nasofl/keys", "NoNewPrivileges=true"):  # fmt: skip
        assert f"\n{line}\n" in clientapp, line
    assert "--isolation process" in (DEPLOY / "systemd/nasofl-supernode.service").read_text()
