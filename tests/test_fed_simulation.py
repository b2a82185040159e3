"""A real ``flwr run`` of the app (Flower's simulation engine) through ``nasofl-sim run --preset toy``:
2 synthetic hospitals, both stages, 1 round each at 32 px; the background SuperLink is stopped afterwards.

It runs from a regular (non-editable) install, as a hospital or a Docker image installs nasofl: the wheel is
built from this checkout and installed into a fresh virtual environment whose only other entry is the test
venv's site-packages (for torch, flwr...; that folder's own ``.pth`` files, the editable install among them,
are not read), and the command runs outside the checkout.

A decoy answers on Flower's default local SuperLink port 39091 (as a SuperLink another job left there would):
the run must start and use a SuperLink of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import site
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

import pytest

from server.run_log import read_run_log
from simulations.run_cmd import superlink_pids

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


class _Decoy(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def decoy_superlink(port: int = 39091):
    """An HTTP server answering 200 on 127.0.0.1:port (nothing if the port is taken: then something else is)."""
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), _Decoy)
    except OSError:
        yield
        return
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def regular_install(root: Path) -> Path:
    """A venv at ``root`` with nasofl installed from its wheel (not editable); returns its bin folder."""
    wheels = root / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    packages = next((venv / "lib").glob("python3*/site-packages"))
    (packages / "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    for script in metadata.distribution("flwr").entry_points.select(group="console_scripts"):
        # what pip writes for flwr's commands (flwr run starts flower-superlink and flwr-simulation by name)
        module, _, func = script.value.partition(":")
        path = venv / "bin" / script.name
        path.write_text(
            f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n"
        )
        path.chmod(0o755)
    wheel = next(wheels.glob("nasofl-*.whl"))
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv / "bin"


def test_a_clash_of_top_level_packages_is_refused(tmp_path):
    """Another distribution that installs a top-level ``shared`` would replace nasofl's code: refused, named."""
    other = tmp_path / "other"
    info = other / "hospital_utils-2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hospital-utils\nVersion: 2.0\n")
    (info / "top_level.txt").write_text("shared\n")
    env = {**os.environ, "PYTHONPATH": f"{other}{os.pathsep}{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", "validate", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "'shared' also from hospital-utils" in proc.stderr and "its own virtual environment" in proc.stderr


def test_toy_simulation_runs_both_stages_with_flwr_run(tmp_path):
    from simulations.synth.cohort import CohortConfig, generate_cohort

    data = tmp_path / "hospitals"
    generate_cohort(data, CohortConfig(sites=2, patients_per_site=(6, 6), seed=11), progress=False)
    out = tmp_path / "sim"
    bin_dir = regular_install(tmp_path / "install")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    with decoy_superlink():
        proc = subprocess.run(
            [str(bin_dir / "nasofl-sim"), "run", "--preset", "toy", "--out", str(out), "--data", str(data)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    port = proc.stdout.split("own SuperLink on 127.0.0.1:")[1].split()[0]
    flwr_log = (out / "flwr-run.log").read_text()
    assert port != "39091" and f"Starting local SuperLink on 127.0.0.1:{port}" in flwr_log, flwr_log[-2000:]
    assert "AUC T2WI" in proc.stdout and "per site" in proc.stdout
    # progress while it ran (not a TTY: plain lines), from the study's run log
    assert "study started: 1 segmenter rounds, then 1 rounds for each of t2, t1+t2 (3 in all)" in proc.stdout
    assert "segmenter round 1/1 | 2 site(s) replied" in proc.stdout
    assert "classifier t1+t2 round 1/1 | 2 site(s) replied" in proc.stdout and "elapsed" in proc.stdout
    assert "study COMPLETED" in proc.stdout
    assert superlink_pids(out / ".flwr") == [], "the background SuperLink must be stopped"
    # the Flower app that ran is the installed one, not this checkout
    installed = next((tmp_path / "install" / "venv" / "lib").glob("python3*/site-packages"))
    assert (installed / "shared" / "pyproject.toml").is_file() and not (installed / "pyproject.toml").exists()
    assert (out / "app" / "server" / "app.py").read_text() == (installed / "server" / "app.py").read_text()
    study = out / "study"
    results = json.loads((study / "results.json").read_text())
    assert results["mode"] == "federated" and set(results["auc"]) == {"t2", "t1+t2"}
    assert set(results["sites"]) == {"hospital-a", "hospital-b"}
    rounds = [x for x in read_run_log(study / "run-log.jsonl") if x["event"] == "round"]
    assert [(x["stage"], x["dataset"]) for x in rounds] == [("seg", ""), ("cls", "t2"), ("cls", "t1+t2")]
    for x in rounds:
        assert x["sites_contributed"] == ["hospital-a", "hospital-b"] and len(x["model_sha256"]) == 64
        assert x["bytes_sent_train"] > 0 and x["bytes_received_train"] > 0
