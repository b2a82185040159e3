"""Unit tests of the federation's pure parts: update checks, pooled evaluation, checkpoints, run log, config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from server.checkpoint import CheckpointStore, load_arrays, save_arrays
from server.config import federation_from_run_config, split_run_config
from server.pooled_eval import cls_figures, pool, seg_figures
from server.run_log import RunLog, read_run_log
from server.update_check import update_problem
from shared import protocol as P
from shared.errors import ConfigError, ModelMismatchError
from shared.metrics import auc, histogram_auc_error_bound, score_histograms
from shared.records import model_hash, numpy_to_record, record_to_numpy, record_to_state, state_to_record
from tests.fed_support import default_run_config

GLOBAL = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32), "n": np.array(5, np.int64)}
METRICS = {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 0.5}


def test_update_check_accepts_a_good_update():
    upd = {k: v + 1 for k, v in GLOBAL.items()}
    assert update_problem(GLOBAL, upd, METRICS, (P.NUM_EXAMPLES,)) is None


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda u: u.update(w=np.full((2, 3), np.nan, np.float32)), "NaN"),
        (lambda u: u.update(b=np.full(3, np.inf, np.float32)), "NaN or infinite"),
        (lambda u: u.update(w=np.ones((3, 2), np.float32)), "shape"),
        (lambda u: u.pop("b"), "missing"),
        (lambda u: u.update(extra=np.ones(1)), "unexpected"),
    ],
)
def test_update_check_rejects_poisoned_arrays(mutate, expected):
    upd = {k: v.copy() for k, v in GLOBAL.items()}
    mutate(upd)
    problem = update_problem(GLOBAL, upd, METRICS, (P.NUM_EXAMPLES,))
    assert problem is not None and expected in problem


@pytest.mark.parametrize(
    "metrics", [{P.TRAIN_LOSS: 0.1}, {P.NUM_EXAMPLES: -1}, {P.NUM_EXAMPLES: 3, "x": float("nan")}]
)
def test_update_check_rejects_bad_metrics(metrics):
    assert update_problem(GLOBAL, dict(GLOBAL), metrics, (P.NUM_EXAMPLES,)) is not None


def test_pooled_auc_from_histograms_matches_pooled_scores_within_binning_bound():
    rng = np.random.default_rng(0)
    sums, all_s, all_y = {}, [], []
    for i, n in enumerate((40, 25, 60)):
        y = (rng.random(n) < 0.35).astype(int)
        y[:2] = [0, 1]
        s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y + 0.3 * i)))
        pos, neg = score_histograms(s, y, 50)
        sums[f"site-{i}"] = {P.HIST_POS: pos, P.HIST_NEG: neg, P.NUM_EXAMPLES: n, P.EVAL_LOSS: 0.5}
        all_s.append(s)
        all_y.append(y)
    pooled, per_site = pool(cls_figures, sums)
    s, y = np.concatenate(all_s), np.concatenate(all_y)
    exact = auc(s, y)
    pos, neg = score_histograms(s, y, 50)
    bound = histogram_auc_error_bound(pos, neg)
    assert abs(pooled["auc"] - exact) <= bound + 1e-12
    assert pooled["auc-lo"] <= pooled["auc"] <= pooled["auc-hi"]
    assert pooled["num-pos"] + pooled["num-neg"] == len(y)
    assert set(per_site) == set(sums)
    # pooling is not the average of per-site AUCs: it is the AUC of the pooled patients
    assert abs(pooled["auc"] - np.mean([v["auc"] for v in per_site.values()])) > 1e-6


def test_pooled_dice_is_from_summed_sums_and_respects_the_pooled_set():
    sums = {
        "a": {
            P.DICE_INTERSECTION: 30,
            P.DICE_PRED_SUM: 40,
            P.DICE_TRUE_SUM: 50,
            P.NUM_PATIENTS: 2,
            P.NUM_EXAMPLES: 2,
            P.EVAL_LOSS: 0.3,
        },
        "b": {
            P.DICE_INTERSECTION: 0,
            P.DICE_PRED_SUM: 10,
            P.DICE_TRUE_SUM: 0,
            P.NUM_PATIENTS: 1,
            P.NUM_EXAMPLES: 1,
            P.EVAL_LOSS: 1.0,
        },
    }
    pooled, per_site = pool(seg_figures, sums)
    assert pooled["dice"] == pytest.approx(2 * 30 / (50 + 50))
    assert per_site["a"]["dice"] == pytest.approx(60 / 90)
    only_a, _ = pool(seg_figures, sums, ["a"])
    assert only_a["dice"] == pytest.approx(60 / 90)


def test_checkpoint_round_trip_and_fingerprint_guard(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    assert store.load() is None
    arrays = {"enc.w": np.arange(6, dtype=np.float32).reshape(2, 3), "bn.n": np.array([3], np.int64)}
    state = {"m_t": {"enc.w": np.ones((2, 3))}, "v_t": {"enc.w": np.full((2, 3), 2.0)}}
    store.save_round(
        stage="cls",
        dataset="t1+t2",
        round=2,
        arrays=arrays,
        strategy_state=state,
        fingerprint="abc",
        seed=7,
        completed=["seg"],
    )
    store.save_final("seg", arrays)  # a completed stage's final arrays are part of the checkpoint
    ck = store.load_for_resume("abc")
    assert (ck.stage, ck.dataset, ck.round, ck.seed, ck.completed) == ("cls", "t1+t2", 2, 7, ["seg"])
    assert list(ck.arrays) == list(arrays)
    for k in arrays:
        assert ck.arrays[k].dtype == arrays[k].dtype and np.array_equal(ck.arrays[k], arrays[k])
    assert np.array_equal(ck.strategy_state["v_t"]["enc.w"], state["v_t"]["enc.w"])
    with pytest.raises(ConfigError, match="resume"):
        store.load_for_resume("other")
    store.save_final("cls:t1+t2", arrays)
    assert store.final_path("cls:t1+t2").name == "final-cls-t1plust2.npz"
    store.clear()
    assert store.load() is None and store.load_final("cls:t1+t2") is None


def test_save_arrays_is_atomic_and_keeps_names(tmp_path):
    path = tmp_path / "a.npz"
    save_arrays(path, {"x.y/z": np.ones(2)})
    assert list(load_arrays(path)) == ["x.y/z"]
    assert not list(tmp_path.glob("*.tmp"))


def test_run_log_appends_json_lines_and_skips_a_torn_line(tmp_path):
    log = RunLog(tmp_path / "run-log.jsonl")
    log.append("round", stage="seg", round=1, sites_contributed=["a", "b"], value=float("nan"), s={"x"})
    log.append("end", status="COMPLETED")
    with open(tmp_path / "run-log.jsonl", "a") as fh:
        fh.write('{"event": "rou')  # crash mid-write
    lines = read_run_log(tmp_path / "run-log.jsonl")
    assert [line["event"] for line in lines] == ["round", "end"]
    assert lines[0]["value"] is None and lines[0]["s"] == ["x"]
    json.loads((tmp_path / "run-log.jsonl").read_text().splitlines()[0])


def test_records_round_trip_with_transport_dtype_and_hash():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    rec = state_to_record(model.state_dict(), "float16")
    arrays = record_to_numpy(rec)
    assert arrays["0.weight"].dtype == np.float16 and arrays["1.num_batches_tracked"].dtype == np.int64
    state = record_to_state(rec, model.state_dict())
    assert state["0.weight"].dtype == torch.float32 and state["1.num_batches_tracked"].shape == ()
    assert model_hash(arrays) == model_hash(numpy_to_record(arrays, "float16"))
    assert model_hash(arrays) != model_hash(numpy_to_record(arrays, "float32"))
    arrays["0.weight"] = arrays["0.weight"] * np.nan
    with pytest.raises(ModelMismatchError, match="NaN"):
        record_to_state(numpy_to_record(arrays), model.state_dict())


@pytest.mark.parametrize(
    "key, value",
    [
        ("strategy", "fedavgg"),
        ("seg-rounds", -1),
        ("out-dir", "relative/path"),
        ("min-sites", 0),
        ("transport-dtype", "int8"),
    ],
)
def test_config_error_names_the_key(key, value):
    rc = default_run_config()
    rc[key] = value
    with pytest.raises(ConfigError, match=key):
        federation_from_run_config(rc)


def test_unknown_and_missing_keys_are_named():
    rc = default_run_config()
    rc["seg-roundz"] = 3
    with pytest.raises(ConfigError, match="seg-roundz.*did you mean 'seg-rounds'"):
        split_run_config(rc)
    rc = default_run_config()
    del rc["min-sites"]
    with pytest.raises(ConfigError, match="min-sites"):
        federation_from_run_config(rc)


def test_site_failure_text_is_scrubbed_of_patient_ids_and_paths():
    from types import SimpleNamespace

    from client.app import _scrub
    from shared.data.report import ValidationReport

    report = ValidationReport("site")  # the site's own report: its scrubber knows every id and name
    report.scrubber.add("HA00012", "p-0123456789")
    report.scrubber.add_name("Doe^Jane", "p-0123456789")
    data = SimpleNamespace(report=report)
    text = _scrub("cannot read /data/site/HA00012/img1.dcm of patient HA00012 (Jane) in HA00012b/x.dcm", data)
    assert "HA00012" not in text and "/data" not in text and "p-0123456789" in text
    assert "Jane" not in text  # strict mode: every name part, ids also inside longer tokens
