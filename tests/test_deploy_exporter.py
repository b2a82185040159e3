"""``nasofl-coord exporter``: a real HTTP exporter process on loopback, scraped with urllib; values checked
against a run log written with server.run_log.RunLog (the ServerApp's own writer)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from server.run_log import RunLog
from server.telemetry import RunLogTail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def round_line(log: RunLog, stage: str, dataset: str, rnd: int, **extra) -> None:
    fields = dict(
        stage=stage,
        dataset=dataset,
        round=rnd,
        sites_contributed=["hospital-a", "hospital-b"],
        sites_failed={},
        updates_rejected={},
        eval_failed={},
        model_float32_bytes=1000,
        bytes_sent_train=2000,
        bytes_received_train=1900,
        bytes_sent_eval=2000,
        seconds_round=3.5,
        site_train_seconds={"hospital-a": 1.0, "hospital-b": 2.0},
        eval_pooled={},
        settings={"seed": 0},
    )
    fields.update(extra)
    log.append("round", **fields)


def write_study(log: RunLog) -> None:
    log.append("start", resume=False)
    log.append("sites", sites={"hospital-a": {"role": "train"}, "hospital-b": {"role": "train"}})
    round_line(log, "seg", "", 1, eval_pooled={"dice": 0.5, "loss": 0.5, "num-patients": 4.0})
    round_line(
        log,
        "seg",
        "",
        2,
        sites_contributed=["hospital-a"],
        sites_failed={"hospital-b": "RuntimeError at train.seg"},
        eval_pooled={"dice": 0.625, "loss": 0.4, "num-patients": 4.0},
    )
    round_line(
        log,
        "cls",
        "t2",
        1,
        sites_contributed=["hospital-a"],
        updates_rejected={"hospital-b": "non-finite values"},
        eval_pooled={"num-pos": 4.0, "num-neg": 6.0, "auc": 0.75, "auc-lo": float("nan")},
    )


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def wait_for_exporter(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"exporter exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            return scrape(port)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_exporter_serves_run_log_metrics_over_http(tmp_path):
    path = tmp_path / "run-log.jsonl"
    log = RunLog(path)
    write_study(log)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "exporter", "--run-log", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        m = wait_for_exporter(port, proc)
        seg = (("dataset", ""), ("stage", "seg"))
        t2 = (("dataset", "t2"), ("stage", "cls"))
        assert m[("nasofl_server_rounds_completed_total", seg)] == 2
        assert m[("nasofl_server_rounds_completed_total", t2)] == 1
        assert m[("nasofl_server_round_contributing_sites", seg)] == 1
        assert m[("nasofl_server_round_failed_sites", seg)] == 1
        assert m[("nasofl_server_round_rejected_updates", t2)] == 1
        assert m[("nasofl_server_site_failures_total", (("site", "hospital-b"), ("stage", "seg")))] == 1
        assert m[("nasofl_server_updates_rejected_total", (("site", "hospital-b"), ("stage", "cls")))] == 1
        assert m[("nasofl_server_site_contributions_total", (("site", "hospital-a"), ("stage", "seg")))] == 2
        assert (
            m[("nasofl_server_pooled_dice_ratio", (("dataset", ""), ("split", "val"), ("stage", "seg")))]
            == 0.625
        )
        auc_key = (("dataset", "t2"), ("split", "val"), ("stage", "cls"))
        assert m[("nasofl_server_pooled_auc_ratio", auc_key)] == 0.75
        assert ("nasofl_server_pooled_auc_lo_ratio", auc_key) not in m  # NaN in the log -> null -> no sample
        assert (
            m[("nasofl_server_sent_bytes_total", (("dataset", ""), ("phase", "train"), ("stage", "seg")))]
            == 4000
        )
        assert m[("nasofl_server_received_bytes_total", seg)] == 3800
        assert m[("nasofl_server_round_duration_seconds", seg)] == 3.5
        assert m[("nasofl_server_rounds_duration_seconds_total", seg)] == 7.0
        assert m[("nasofl_server_study_status_info", (("status", "RUNNING"),))] == 1
        assert m[("nasofl_server_sites_registered_sites", ())] == 2
        labels = {k for key in m for k, _ in key[1]}
        assert labels <= {"stage", "dataset", "site", "split", "phase", "status"}, labels

        # tailing: lines appended later show up at the next scrape; a torn line waits for its newline
        round_line(log, "cls", "t2", 2, eval_pooled={"auc": 0.8})
        log.append("final-test", stage="cls", dataset="t2", pooled={"auc": 0.7}, per_site={})
        log.append("end", status="COMPLETED", seconds=12.5)
        with open(path, "a") as fh:
            fh.write('{"event": "round", "stage": "cls"')
        m = scrape(port)
        assert m[("nasofl_server_rounds_completed_total", t2)] == 2
        assert m[("nasofl_server_pooled_auc_ratio", auc_key)] == 0.8
        assert (
            m[("nasofl_server_pooled_auc_ratio", (("dataset", "t2"), ("split", "test"), ("stage", "cls")))]
            == 0.7
        )
        assert m[("nasofl_server_study_status_info", (("status", "COMPLETED"),))] == 1
        assert m[("nasofl_server_study_duration_seconds", ())] == 12.5
        assert m[("nasofl_server_run_log_lines_total", ())] == 8
        assert m[("nasofl_server_run_log_bad_lines_total", ())] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_exporter_once_without_run_log_reports_absent(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "exporter", "--run-log", str(tmp_path / "none.jsonl"), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nasofl_server_run_log_present_bool 0.0" in proc.stdout
    assert 'nasofl_server_study_status_info{status="NOT_STARTED"} 1.0' in proc.stdout


def test_tail_restarts_when_the_run_log_is_replaced(tmp_path):
    path = tmp_path / "run-log.jsonl"
    write_study(RunLog(path))
    tail = RunLogTail(path)
    assert tail.poll().rounds[("seg", "")] == 2
    path.unlink()
    RunLog(path).append("start", resume=False)
    state = tail.poll()
    assert state.lines == 1 and state.rounds.get(("seg", ""), 0) == 0 and state.status == "RUNNING"


def test_exporter_reports_a_running_study_whose_process_is_gone_as_crashed(tmp_path):
    RunLog(tmp_path / "run-log.jsonl").append("start", resume=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    host = socket.gethostname()
    (tmp_path / "STATUS").write_text(f"RUNNING\npid={dead.pid}\nhost={host}\nheartbeat={time.time():.1f}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "exporter",
            "--run-log",
            str(tmp_path / "run-log.jsonl"),
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'nasofl_server_study_status_info{status="CRASHED"} 1.0' in proc.stdout
