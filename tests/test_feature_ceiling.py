"""``simulations.feature_ceiling``: hand features fitted on train+val, scored on the cohort's test split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.data.split import patient_split
from simulations.cohort_loading import TOY_GRID_ARGS
from simulations.feature_ceiling import DATASET_COLUMNS, cohort_ceiling
from simulations.synth.cohort import CohortConfig, generate_cohort
from simulations.synth.site_profile import GridPreset


def _cohort(tmp_path, difficulty: float):
    config = replace(
        CohortConfig.preset("default", sites=2, patients=40, seed=3, difficulty=difficulty),
        grid=GridPreset(**TOY_GRID_ARGS),
    )
    folder = tmp_path / f"k{difficulty:g}"
    generate_cohort(folder, config, progress=False)
    return folder


@pytest.mark.slow
def test_strong_signal_scores_high_on_test_and_no_signal_does_not(tmp_path, monkeypatch) -> None:
    import simulations.feature_ceiling as fc

    scored: list[int] = []
    real = fc.auc_on_test_split

    def counting(x_fit, y_fit, x_test, y_test):
        scored.append(len(y_test))
        return real(x_fit, y_fit, x_test, y_test)

    monkeypatch.setattr(fc, "auc_on_test_split", counting)
    strong = cohort_ceiling(_cohort(tmp_path, 4.0))
    assert set(strong) == {"reference", "truth-muscle"} and set(strong["reference"]) == set(DATASET_COLUMNS)
    assert strong["truth-muscle"]["t1+t2"][0] > 0.85 and strong["reference"]["t1+t2"][0] > 0.8
    # scored on exactly the test patients of the pipeline's own split rule
    labels = {}
    for site in sorted((tmp_path / "k4" / "_truth").iterdir()):
        if site.is_dir():
            arrays = [np.load(f) for f in sorted(site.glob("*.npz"))]
            split = patient_split({str(a["patient_id"]): int(a["label"]) for a in arrays})
            labels[site.name] = sum(s == "test" for s in split.values())
    assert set(scored) == {sum(labels.values())}
    none = cohort_ceiling(_cohort(tmp_path, 0.0))
    assert none["truth-muscle"]["t1+t2"][0] < 0.8  # no class signal: no better than a coin on most draws
