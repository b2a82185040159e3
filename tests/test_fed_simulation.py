"""A real ``flwr run`` of the app (Flower's simulation engine) through ``nasofl-sim run --preset toy``:
2 synthetic hospitals, both stages, 1 round each at 32 px; the background SuperLink is stopped afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from server.run_log import read_run_log
from simulations.run_cmd import superlink_pids

pytestmark = pytest.mark.slow


def test_toy_simulation_runs_both_stages_with_flwr_run(tmp_path):
    from simulations.synth.cohort import CohortConfig, generate_cohort

    data = tmp_path / "hospitals"
    generate_cohort(data, CohortConfig(sites=2, patients_per_site=(6, 6), seed=11), progress=False)
    out = tmp_path / "sim"
    proc = subprocess.run(
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
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "AUC T2WI" in proc.stdout and "per site" in proc.stdout
    # progress while it ran (not a TTY: plain lines), from the study's run log
    assert "study started: 1 segmenter rounds, then 1 rounds for each of t2, t1+t2 (3 in all)" in proc.stdout
    assert "segmenter round 1/1 | 2 site(s) replied" in proc.stdout
    assert "classifier t1+t2 round 1/1 | 2 site(s) replied" in proc.stdout and "elapsed" in proc.stdout
    assert "study COMPLETED" in proc.stdout
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
