"""A real Prometheus server (Debian package ``prometheus``) scrapes ``nasofl-coord exporter`` on loopback and
answers a PromQL query over its HTTP API with the run log's values. Fails (no skip) when the binary is missing:
the coordinator's monitoring depends on it; install it with ``apt-get install -y prometheus``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from server.run_log import RunLog
from tests.test_deploy_exporter import free_port, write_study


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_the_exporter(tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus binary not found: apt-get install -y prometheus (see README test command)"
    run_log = tmp_path / "run-log.jsonl"
    write_study(RunLog(run_log))
    exporter_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: nasofl-study\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    procs = []
    try:
        cmd = [
            sys.executable,
            "-m",
            "server.cli",
            "exporter",
            "--run-log",
            str(run_log),
            "--port",
            str(exporter_port),
        ]
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        )
        with open(tmp_path / "prometheus.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline, result = time.time() + 30, []
        while time.time() < deadline:
            for p in procs:
                assert p.poll() is None, (
                    f"{p.args[0]} exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                result = query(prom_port, 'nasofl_server_rounds_completed_total{stage="seg"}')
            except OSError:
                result = []
            if result:
                break
            time.sleep(0.5)
        assert result, (
            "Prometheus never scraped the exporter:\n" + (tmp_path / "prometheus.log").read_text()[-2000:]
        )
        assert float(result[0]["value"][1]) == 2.0 and result[0]["metric"]["job"] == "nasofl-study"
        auc = query(prom_port, 'nasofl_server_pooled_auc_ratio{dataset="t2",split="val"}')
        assert [float(x["value"][1]) for x in auc] == [0.75]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait(timeout=20)
