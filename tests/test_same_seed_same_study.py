"""The same seed gives the same study on one machine, whatever order the sites' replies arrive in.

Two in-process studies (the real ServerApp and ClientApp, tests.fed_support.LocalGrid) on one cohort and one
seed; the second grid hands the server every batch of replies in reverse node order, as a SuperLink does when
another site finishes first. The final arrays of every stage and the reported figures must be identical: the
server sums replies in a fixed site order, never in arrival order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.app import app as client_app
from server.app import app as server_app
from server.checkpoint import load_arrays
from tests.fed_support import LocalGrid, server_context, toy_run_config

pytestmark = pytest.mark.slow


class ReversedArrivalGrid(LocalGrid):
    """Replies come back last node first."""

    def send_and_receive(self, messages, *, timeout=None):
        return list(reversed(list(super().send_and_receive(messages, timeout=timeout))))


def _study(cohort: Path, out: Path, grid_type: type[LocalGrid]) -> None:
    overrides = {"sim-cache-root": str(out / "cache"), "seg-rounds": 2, "datasets": "t1+t2", "seed": 11}
    rc = toy_run_config(cohort, out, **overrides)
    server_app(grid_type(client_app, 3, rc), server_context(rc))
    assert (out / "STATUS").read_text().startswith("COMPLETED")


def test_two_runs_with_one_seed_give_identical_arrays_and_figures(tmp_path):
    from simulations.synth.cohort import CohortConfig, generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, CohortConfig(sites=3, patients_per_site=(6, 7, 8), seed=2), progress=False)
    first, second = tmp_path / "first", tmp_path / "second"
    _study(cohort, first, LocalGrid)
    _study(cohort, second, ReversedArrivalGrid)
    finals = sorted(p.name for p in (first / "checkpoints").glob("final-*.npz"))
    assert finals == ["final-cls-t1plust2.npz", "final-seg.npz"]
    for name in finals:
        a, b = load_arrays(first / "checkpoints" / name), load_arrays(second / "checkpoints" / name)
        assert list(a) == list(b)
        for key in a:
            assert np.array_equal(a[key], b[key]), f"{name}:{key} differs between two runs of one seed"
    ra = json.loads((first / "results.json").read_text())
    rb = json.loads((second / "results.json").read_text())
    assert ra["dice"] == rb["dice"]
    assert ra["auc"] == rb["auc"]
