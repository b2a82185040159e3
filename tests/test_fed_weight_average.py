"""``seg-weight-ema`` federated: the real ServerApp and ClientApp in one process (tests.fed_support.LocalGrid).

The sites train from each round's global model and evaluate the coordinator's average of the global models; the
kept segmenter is the average; a study resumed after a crash ends with the same kept segmenter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.app import app as client_app
from server.app import app as server_app
from server.checkpoint import load_arrays
from server.round_recorder import SimulatedCrash
from shared import protocol as P
from shared.records import record_to_numpy
from tests.fed_support import LocalGrid, server_context, toy_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from simulations.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("emacohort")
    generate_cohort(root, CohortConfig(sites=2, patients_per_site=(7, 7), seed=11), progress=False)
    return root


def run_study(rc: dict) -> LocalGrid:
    grid = LocalGrid(client_app, 2, rc)
    server_app(grid, server_context(rc))
    return grid


def seg_models(grid: LocalGrid, message_type: str, split: str | None = None) -> list[dict[str, np.ndarray]]:
    """The model each round's messages of this type carried (one per round: every site gets the same)."""
    out: list[dict[str, np.ndarray]] = []
    last_round_ids: set[int] = set()
    for msg in grid.sent:
        if msg.metadata.message_type != message_type:
            continue
        config = next(iter(msg.content.config_records.values()))
        if split is not None and config.get(P.CFG_SPLIT) != split:
            continue
        arrays = record_to_numpy(next(iter(msg.content.array_records.values())))
        node = msg.metadata.dst_node_id
        if not out or node in last_round_ids:  # a node seen again: the next round's messages begin
            out.append(arrays)
            last_round_ids = set()
        last_round_ids.add(node)
    return out


def test_sites_train_from_the_global_model_and_evaluate_the_coordinators_average(cohort, tmp_path):
    rc = toy_run_config(
        cohort,
        tmp_path / "out",
        **{"seg-rounds": 3, "datasets": "t2", "seg-weight-ema": 0.5, "select-round": "last", "cls-rounds": 1},
    )
    grid = run_study(rc)
    trained_from = seg_models(grid, P.TRAIN_SEG)  # round r trains from the global model after round r - 1
    evaluated = seg_models(grid, P.EVALUATE_SEG, "val")
    assert len(trained_from) == 3 and len(evaluated) == 3
    global_1, global_2 = trained_from[1], trained_from[2]
    floats = [k for k, v in global_1.items() if np.issubdtype(v.dtype, np.floating)]
    for k in global_1:
        np.testing.assert_array_equal(
            evaluated[0][k], global_1[k]
        )  # round 1: the average is the global model
    moved = 0
    for k in floats:
        want = (0.5 * global_1[k].astype(np.float64) + 0.5 * global_2[k].astype(np.float64)).astype(
            global_2[k].dtype
        )
        np.testing.assert_array_equal(evaluated[1][k], want)
        moved += not np.array_equal(evaluated[1][k], global_2[k])
    assert moved > len(floats) // 2, "round 2 evaluated the average, not the global model"
    # select-round=last: the kept segmenter is round 3's average, which the final test evaluated too
    kept = load_arrays(tmp_path / "out" / "checkpoints" / "final-seg.npz")
    for k in kept:
        np.testing.assert_array_equal(kept[k], evaluated[2][k])
    (tested,) = seg_models(grid, P.EVALUATE_SEG, "test")
    for k in kept:
        np.testing.assert_array_equal(tested[k], kept[k])


def test_a_resumed_study_keeps_the_same_averaged_segmenter(cohort, tmp_path):
    common = {"seg-rounds": 3, "datasets": "t2", "seg-weight-ema": 0.5, "cls-rounds": 1, "seed": 2}
    full = tmp_path / "full"
    run_study(toy_run_config(cohort, full, **common, **{"sim-cache-root": str(tmp_path / "cache-full")}))
    broken = tmp_path / "broken"
    cache = str(tmp_path / "cache-broken")
    with pytest.raises(SimulatedCrash):
        run_study(
            toy_run_config(cohort, broken, **common, **{"sim-cache-root": cache, "debug-stop-after-round": 2})
        )
    state = json.loads((broken / "checkpoints" / "state.json").read_text())
    assert (state["stage"], state["round"]) == ("seg", 2)
    parts = {k.partition("/")[0] for k in load_arrays(broken / "checkpoints" / "strategy.npz")}
    assert {"seg-weight-ema", "seg-weight-ema-kept"} <= parts
    run_study(toy_run_config(cohort, broken, **common, **{"sim-cache-root": cache, "resume": True}))
    a = load_arrays(full / "checkpoints" / "final-seg.npz")
    b = load_arrays(broken / "checkpoints" / "final-seg.npz")
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} differs after resume")
    # a checkpoint written with the average cannot be resumed with it off: the settings fingerprint differs
    with pytest.raises(Exception, match="other study settings"):
        run_study(
            toy_run_config(
                cohort,
                broken,
                **{**common, "seg-weight-ema": 0.0},
                **{"sim-cache-root": cache, "resume": True},
            )
        )
