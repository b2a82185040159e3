"""A real ``flwr run`` of the app (Flower's simulation engine) through ``nasofl-sim run --preset toy``:
2 synthetic hospitals, both stages, 1 round each at 32 px; the background SuperLink is stopped afterwards.
A decoy answers on Flower's default local SuperLink port 39091 (as a SuperLink another job left there would):
the run must start and use a SuperLink of its own."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server.run_log import read_run_log
from simulations.run_cmd import superlink_pids

pytestmark = pytest.mark.slow


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


def test_toy_simulation_runs_both_stages_with_flwr_run(tmp_path):
    from shared.data.synth.cohort import CohortConfig, generate_cohort

    data = tmp_path / "hospitals"
    generate_cohort(data, CohortConfig(sites=2, patients_per_site=(6, 6), seed=11), progress=False)
    out = tmp_path / "sim"
    with decoy_superlink():
        proc = _run_toy(out, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    port = proc.stdout.split("own SuperLink on 127.0.0.1:")[1].split()[0]
    flwr_log = (out / "flwr-run.log").read_text()
    assert port != "39091" and f"Starting local SuperLink on 127.0.0.1:{port}" in flwr_log, flwr_log[-2000:]
    _check_outputs(proc, out)


def _run_toy(out, data):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.cli",
            "run",
            "--preset",
            "toy",
            "--out",
            str(out),
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _check_outputs(proc, out):
    assert "AUC T2WI" in proc.stdout and "per site" in proc.stdout
    assert superlink_pids(out / ".flwr") == [], "the background SuperLink must be stopped"
    study = out / "study"
    results = json.loads((study / "results.json").read_text())
    assert results["mode"] == "federated" and set(results["auc"]) == {"t2", "t1+t2"}
    assert set(results["sites"]) == {"hospital-a", "hospital-b"}
    rounds = [x for x in read_run_log(study / "run-log.jsonl") if x["event"] == "round"]
    assert [(x["stage"], x["dataset"]) for x in rounds] == [("seg", ""), ("cls", "t2"), ("cls", "t1+t2")]
    for x in rounds:
        assert x["sites_contributed"] == ["hospital-a", "hospital-b"] and len(x["model_sha256"]) == 64
        assert x["bytes_sent_train"] > 0 and x["bytes_received_train"] > 0
