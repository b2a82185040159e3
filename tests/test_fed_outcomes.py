"""Nothing reports success it did not earn (issue 8 §4): strict checkpoints, STATUS that survives kill -9, run
config validated before Flower, the ROI cache private, the study FAILED when no classifier trained or the final
test lacks min-sites; and the site's evaluation histograms (capped, small counts merged) still pool correctly."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.app import app as client_app
from server.app import app as server_app
from server.checkpoint import CheckpointStore, save_arrays
from server.config import federation_from_run_config, pipeline_from_run_config, settings_fingerprint
from server.pooled_eval import cls_figures
from server.status import STALE_S, read_status, write_status
from server.update_check import eval_problem
from shared import protocol as P
from shared.errors import CheckpointError, ConfigError
from shared.metrics import auc, score_histograms
from shared.metrics.coarse_histograms import pooled_auc, site_histograms
from shared.metrics.histogram_auc import delong_ci_from_histograms, histogram_auc_error_bound
from simulations.scenarios import SCENARIOS
from tests.fed_support import LocalGrid, default_run_config, server_context

ARRAYS = {"w": np.ones((2, 3), np.float32), "n": np.array([3], np.int64)}

# ---- checkpoints ------------------------------------------------------------------------------------------


def _store(tmp_path) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "ck")
    store.save_round(
        stage="seg",
        dataset="",
        round=2,
        arrays=ARRAYS,
        strategy_state={},
        fingerprint="f",
        seed=0,
        completed=[],
    )
    return store


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated"])
def test_a_damaged_current_checkpoint_fails_naming_the_file(tmp_path, damage):
    store = _store(tmp_path)
    current = store.dir / "current.npz"
    if damage == "missing":
        current.unlink()
    elif damage == "empty":
        save_arrays(current, {})
    else:
        current.write_bytes(current.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="current.npz") as err:
        store.load_for_resume("f")
    assert "resume=false" in str(err.value)


def test_a_completed_stage_without_its_final_arrays_fails(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    store.save_round(
        stage="cls", dataset="t2", round=1, arrays=ARRAYS, strategy_state={}, fingerprint="f", seed=0,
        completed=["seg"],
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="final-seg.npz"):
        store.load()
    save_arrays(store.final_path("seg"), {})
    with pytest.raises(CheckpointError, match="holds no array"):
        store.load_final("seg")


def test_a_failed_write_names_the_file_and_leaves_no_tmp(tmp_path):
    target = tmp_path / "current.npz"
    target.mkdir()  # a folder where the file should go: the rename fails like a full or read-only disk
    with pytest.raises(CheckpointError, match=r"current\.npz.*free disk space"):
        save_arrays(target, ARRAYS)
    assert not list(tmp_path.glob("*.tmp")), "a failed write left its temporary file"


def test_resume_with_current_checkpoint_missing_ends_the_study_failed_naming_it(tmp_path):
    rc = default_run_config()
    rc.update(SCENARIOS["toy"].run_config)
    rc.update({"out-dir": str(tmp_path / "out"), "wait-for-sites-s": 0.0, "resume": True})
    fed, cfg = federation_from_run_config(rc), pipeline_from_run_config(rc)
    store = CheckpointStore(fed.checkpoint_path)
    store.save_round(
        stage="seg", dataset="", round=1, arrays=ARRAYS, strategy_state={},
        fingerprint=settings_fingerprint(fed, cfg), seed=cfg.seed, completed=[],
    )  # fmt: skip
    (store.dir / "current.npz").unlink()
    grid = LocalGrid(client_app, 2, rc)
    with pytest.raises(CheckpointError, match="current.npz"):
        server_app(grid, server_context(rc))
    status = read_status(tmp_path / "out" / "STATUS")
    assert status.state == "FAILED" and "current.npz" in status.detail
    assert grid.sent == [], "nothing was sent to a site with a damaged checkpoint"


# ---- STATUS -----------------------------------------------------------------------------------------------


def test_a_study_killed_with_sigkill_reads_as_crashed(tmp_path):
    path = tmp_path / "STATUS"
    code = f"from pathlib import Path; from server.status import write_status; write_status(Path({str(path)!r}), 'RUNNING'); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 30
        while not path.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert read_status(path).state == "RUNNING"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = read_status(path)
    assert status.state == "CRASHED" and str(proc.pid) in status.detail and "resume=true" in status.detail


def test_a_stale_heartbeat_reads_as_crashed_and_end_states_are_kept(tmp_path):
    path = tmp_path / "STATUS"
    write_status(path, "RUNNING")
    assert read_status(path).state == "RUNNING"
    assert read_status(path, now=time.time() + STALE_S + 5).state == "CRASHED"
    write_status(path, "FAILED", "TooFewSitesError: x")
    assert read_status(path).detail == "TooFewSitesError: x"
    assert read_status(tmp_path / "nothing").state == "MISSING"
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unwritable_out_dir_is_a_config_error_naming_out_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = default_run_config()
    rc.update({"out-dir": str(blocker / "out"), "wait-for-sites-s": 0.0})
    with pytest.raises(ConfigError, match="out-dir=.*not a writable folder"):
        server_app(LocalGrid(client_app, 1, rc), server_context(rc))


# ---- run config validated before Flower -------------------------------------------------------------------


def test_nasofl_sim_run_names_an_unknown_set_key_before_calling_flower(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "run", "--preset", "toy", "--out", str(tmp_path / "o"),
         "--set", "seg-roundz=2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown run-config key 'seg-roundz'; did you mean 'seg-rounds'?" in proc.stderr
    assert not (tmp_path / "o").exists(), "nothing generated, no Flower run"


def test_check_config_command(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "server.cli", "check-config", "--run-config", "strategy='fedprox' seg-rounds=3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0 and "run config OK" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "server.cli", "check-config", "--run-config", "min-site=3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "did you mean 'min-sites'" in bad.stderr


def test_own_superlink_ports_are_free_and_not_flowers_default(tmp_path):
    from simulations.run_cmd import own_superlink_env

    env = own_superlink_env(tmp_path / ".flwr")
    ports = {int(env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]), int(env["FLWR_LOCAL_CONTROL_API_PORT"])}
    assert len(ports) == 2 and not ports & {39091, 39093}
    assert env["FLWR_HOME"] == str(tmp_path / ".flwr")


# ---- ROI cache permissions ---------------------------------------------------------------------------------


def test_roi_cache_is_private(tmp_path):
    from client.roi_cache import has_roi, load_roi, save_roi
    from shared.roi.datasets import RoiDataset

    ds = RoiDataset(
        "t2",
        ("t2",),
        np.zeros((2, 1, 4, 4), np.float32),
        np.array([0, 1]),
        ["p1", "p2"],
        [0, 1],
        ["train"] * 2,
    )
    old = os.umask(0o022)
    try:
        save_roi(tmp_path, "k1", {"t2": ds}, {"empty-prediction": 0})
    finally:
        os.umask(old)
    for folder in (tmp_path / "roi", tmp_path / "roi" / "k1"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = list((tmp_path / "roi" / "k1").iterdir())
    assert sorted(f.name for f in files) == ["report.json", "t2.npz"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert has_roi(tmp_path, "k1", ("t2",)) and load_roi(tmp_path, "k1", "t2").labels.tolist() == [0, 1]


# ---- evaluation histograms: capped, small counts merged, still pooled -------------------------------------


def _site(rng, n):
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    return np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1), labels


def test_site_histograms_cap_bins_and_merge_small_counts():
    rng = np.random.default_rng(3)
    scores, labels = _site(rng, 30)
    pos, neg, span = site_histograms(scores, labels, 1000, 100, 3)
    assert len(pos) == len(neg) == len(span) == 100
    assert sum(pos) == int(labels.sum()) and sum(neg) == int((1 - labels).sum())
    totals = np.asarray(pos) + np.asarray(neg)
    assert all(t >= 3 for t in totals if t > 0), "a score range holds fewer than min-hist-count patients"
    assert eval_problem({P.HIST_POS: pos, P.HIST_NEG: neg, P.HIST_SPAN: span}) is None
    assert "inside" in str(eval_problem({P.HIST_POS: [1, 1], P.HIST_NEG: [0, 0], P.HIST_SPAN: [2, 0]}))
    fine = site_histograms(scores, labels, 1000, 100, 1)
    assert fine[:2] == tuple(score_histograms(scores, labels, 100)) and fine[2] == [1] * 100


def test_pooled_auc_over_mixed_bins_holds_the_exact_auc_within_its_bound():
    rng = np.random.default_rng(0)
    sites = [_site(rng, n) for n in (12, 20, 40)]
    limits = [(100, 2), (50, 3), (1000, 1)]  # three hospitals, three node configs
    hists = [site_histograms(s, y, 1000, b, k) for (s, y), (b, k) in zip(sites, limits, strict=True)]
    value, lo, hi, bound = pooled_auc(hists)
    all_s = np.concatenate([s for s, _ in sites])
    all_y = np.concatenate([y for _, y in sites])
    exact = auc(all_s, all_y)
    assert abs(value - exact) <= bound + 1e-12 and lo < value < hi
    # equal bins, nothing merged: exactly the single-resolution histogram AUC
    same = [site_histograms(s, y, 1000, 100, 1) for s, y in sites]
    pos, neg = np.sum([h[0] for h in same], 0), np.sum([h[1] for h in same], 0)
    assert pooled_auc(same)[:3] == pytest.approx(delong_ci_from_histograms(pos, neg))
    assert pooled_auc(same)[3] == pytest.approx(histogram_auc_error_bound(pos, neg))
    figures = cls_figures(
        [
            {P.HIST_POS: p, P.HIST_NEG: n, P.HIST_SPAN: w, P.NUM_EXAMPLES: 1, P.EVAL_LOSS: 0.1}
            for p, n, w in hists
        ]
    )
    assert figures["auc"] == pytest.approx(value) and figures["auc-binning-bound"] == pytest.approx(bound)


# ---- the study fails when it did not earn success ----------------------------------------------------------


class NoTrainingRoi:
    """The real ClientApp, but every site's query.roi reply says 0 training patients for every dataset."""

    def __call__(self, message: Message, context) -> Message:
        reply = client_app(message=message, context=context)
        if message.metadata.message_type == P.QUERY_ROI and not reply.has_error():
            metrics = reply.content[P.METRICS]
            for key in list(metrics.keys()):
                if key.endswith("/patients-train"):
                    metrics[key] = 0
        return reply


class FinalTestFails:
    """The real ClientApp; two of three sites answer the final classifier test with an error."""

    def __call__(self, message: Message, context) -> Message:
        conf = message.content.config_records.get(P.CONFIG) or ConfigRecord()
        if (
            message.metadata.message_type == P.EVALUATE_CLS
            and conf.get(P.CFG_SPLIT) == "test"
            and int(context.node_config["partition-id"]) > 0
        ):
            return Message(RecordDict({P.METRICS: MetricRecord({"oops": 1})}), reply_to=message)
        return client_app(message=message, context=context)


@pytest.mark.slow
@pytest.mark.parametrize(
    "client, expected",
    [
        (NoTrainingRoi(), "every classifier dataset was skipped"),
        (FinalTestFails(), "final test of the classifier t2: 1 training site"),
    ],
)
def test_a_study_without_a_classifier_or_without_min_sites_at_the_final_test_fails(
    tmp_path, client, expected
):
    from simulations.synth.cohort import CohortConfig, generate_cohort
    from tests.test_fed_study import toy_config

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, CohortConfig(sites=3, patients_per_site=(7, 7, 7), seed=5), progress=False)
    out = tmp_path / "out"
    rc = toy_config(cohort, out, **{"datasets": "t2", "min-sites": 2})
    from server.strategies import TooFewSitesError

    with pytest.raises(TooFewSitesError, match=expected):
        server_app(LocalGrid(client, 3, rc), server_context(rc))
    status = read_status(out / "STATUS")
    assert status.state == "FAILED" and expected in status.detail
    assert not (out / "results.json").exists()
    end = json.loads((out / "run-log.jsonl").read_text().splitlines()[-1])
    assert end["status"] == "FAILED"


def test_nasofl_sim_run_waits_for_a_running_study_and_reads_its_own_status(tmp_path):
    """`flwr run --stream` may end (lost connection) while the study goes on: the outcome is the study's STATUS."""
    import threading

    from simulations.run_cmd import failure_lines, wait_for_study

    path = tmp_path / "STATUS"
    write_status(path, "RUNNING")
    timer = threading.Timer(1.0, write_status, args=(path, "COMPLETED"))
    timer.start()
    try:
        status = wait_for_study(path, time.time() + 30, poll_s=0.1)
    finally:
        timer.cancel()
    assert status.state == "COMPLETED"
    write_status(path, "RUNNING")
    assert wait_for_study(path, time.time() + 0.3, poll_s=0.1).state == "RUNNING", "gives up at the deadline"
    log = "INFO flwr: x\n12:00:01 ERROR server.app: CONFIG ERROR, study not started: out-dir='/x' is not a writable folder\n"
    assert failure_lines(log) == [
        "12:00:01 ERROR server.app: CONFIG ERROR, study not started: out-dir='/x' is not a writable folder"
    ]
