"""Which round's global model a stage keeps (``select-round``), and that the choice survives a resume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.checkpoint import CheckpointStore
from server.config import federation_from_run_config
from server.round_selection import RoundSelection
from shared.errors import ConfigError
from tests.fed_support import default_run_config


def arrays(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, v, np.float32)}


def test_best_val_keeps_the_first_round_with_the_highest_pooled_figure():
    sel = RoundSelection("best-val", "dice")
    kept = [sel.offer(r, arrays(r), {"dice": d}) for r, d in enumerate([0.2, 0.5, 0.0, 0.5, 0.4], start=1)]
    assert kept == [True, True, False, False, False]
    assert (sel.round, sel.value) == (2, 0.5) and float(sel.arrays["w"][0]) == 2.0
    assert sel.summary(5) == {
        "rule": "best-val",
        "metric": "pooled validation dice",
        "round": 2,
        "of_rounds": 5,
        "value": 0.5,
    }


def test_best_val_never_keeps_a_failed_validation_over_a_real_figure():
    sel = RoundSelection("best-val", "auc")
    assert sel.offer(1, arrays(1), {})  # nothing kept yet: the stage must end with some model
    assert math.isnan(sel.value)
    assert sel.offer(2, arrays(2), {"auc": 0.6})  # a real figure beats a missing one
    assert not sel.offer(3, arrays(3), {"auc": float("nan")})
    assert not sel.offer(4, arrays(4), {})
    assert sel.round == 2


def test_last_keeps_every_new_round():
    sel = RoundSelection("last", "dice")
    for r, d in enumerate([0.9, 0.1, float("nan")], start=1):
        assert sel.offer(r, arrays(r), {"dice": d})
    assert sel.round == 3


def test_kept_round_survives_the_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    common = dict(stage="seg", dataset="", strategy_state={}, fingerprint="f", seed=0, completed=[])
    store.save_round(round=1, arrays=arrays(1), kept=(1, 0.3), **common)
    store.save_round(round=2, arrays=arrays(2), kept=(1, 0.3), **common)  # round 1 still kept
    ck = store.load_for_resume("f")
    assert (ck.round, ck.kept_round, ck.kept_value) == (2, 1, 0.3)
    assert float(ck.arrays["w"][0]) == 2.0 and float(ck.kept_arrays["w"][0]) == 1.0
    store.save_kept_summary("cls:t1+t2", {"rule": "best-val", "round": 1, "value": 0.7})
    assert store.load_kept_summary("cls:t1+t2")["round"] == 1
    store.clear()
    assert store.load() is None and store.load_kept_summary("cls:t1+t2") is None


def test_select_round_config_error_names_the_key_and_the_choices():
    rc = default_run_config()
    assert federation_from_run_config(rc).select_round == "best-val"
    rc["select-round"] = "best"
    with pytest.raises(ConfigError, match="select-round.*best-val, last"):
        federation_from_run_config(rc)
