"""``simulations.feature_ceiling``: hand features fitted on train+val, scored on the cohort's test split; with
``split="val"`` fitted on train, scored on validation, and the test split never loaded."""

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
    real = fc.held_out_auc

    def counting(x_fit, y_fit, x_held, y_held):
        scored.append(len(y_held))
        return real(x_fit, y_fit, x_held, y_held)

    monkeypatch.setattr(fc, "held_out_auc", counting)
    strong = cohort_ceiling(_cohort(tmp_path, 4.0))
    assert set(strong) == {"reference", "truth-muscle"} and set(strong["reference"]) == set(DATASET_COLUMNS)
    assert strong["truth-muscle"]["t1+t2"][0] > 0.85 and strong["reference"]["t1+t2"][0] > 0.8
    # scored on exactly the test patients of the pipeline's own split rule
    counts = {"train": 0, "val": 0, "test": 0}
    for site in sorted((tmp_path / "k4" / "_truth").iterdir()):
        if site.is_dir():
            arrays = [np.load(f) for f in sorted(site.glob("*.npz"))]
            split = patient_split({str(a["patient_id"]): int(a["label"]) for a in arrays})
            for s in split.values():
                counts[s] += 1
    assert set(scored) == {counts["test"]}
    none = cohort_ceiling(_cohort(tmp_path, 0.0))
    assert none["truth-muscle"]["t1+t2"][0] < 0.8  # no class signal: no better than a coin on most draws

    # --split val: scored on exactly the validation patients; the test patients are not even loaded
    loaded: list[tuple[str, ...]] = []
    real_features = fc.cohort_features

    def spying(cohort, cfg, splits=("train", "val"), names=None):
        loaded.append(tuple(splits))
        y, feats, kept = real_features(cohort, cfg, splits=splits, names=names)
        assert "test" not in set(kept)
        scored.append(-int((kept == "train").sum()))  # the fitted patients, marked negative
        return y, feats, kept

    monkeypatch.setattr(fc, "cohort_features", spying)
    scored.clear()
    on_val = cohort_ceiling(tmp_path / "k4", split="val")
    assert loaded == [("train", "val")]
    assert set(scored) == {-counts["train"], counts["val"]}
    assert on_val["truth-muscle"]["t1+t2"][0] > 0.8
    with pytest.raises(ValueError, match="'train' is not scored"):
        cohort_ceiling(tmp_path / "k4", split="train")
