"""Round trip: synthetic hospitals -> ingestion (shared.data.site.load_site) -> the generator's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data.patient import LABELS
from shared.data.site import load_site
from shared.pseudonym import DEFAULT_SALT, pseudonym
from simulations.synth.cohort import CohortConfig, generate_cohort
from simulations.synth.site_profile import GridPreset

TINY_GRID = GridPreset(
    matrix=48, pixel_mm=(4.0, 4.2), n_slices=(9, 9), thickness_mm=(5.0,), gap_mm=(0.0, 1.0)
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_rt") / "cohort"
    config = CohortConfig(
        sites=4, patients_per_site=(3, 3, 3, 3), seed=5, grid=TINY_GRID, min_contoured_per_site=2
    )
    generate_cohort(out, config, progress=False)
    return out


@pytest.mark.parametrize(
    "site", ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
)  # hospital-d exports DICOM SEG instead of RTSTRUCT
def test_ingestion_recovers_truth(cohort: Path, site: str) -> None:
    loaded = load_site(cohort / site)
    by_pseudo = {p.pseudonym: p for p in loaded.patients}
    truths = sorted((cohort / "_truth" / site).glob("*.npz"))
    assert len(by_pseudo) == len(truths) == 3
    contoured = 0
    for path in truths:
        truth = np.load(path)
        pid = truth["patient_id"].item()
        patient = by_pseudo[pseudonym(pid, DEFAULT_SALT)]
        assert patient.label == int(truth["label"]) and patient.label in LABELS.values()
        assert set(patient.images) == set(truth["sequences"].tolist())
        ref = truth["t2_image"]
        assert patient.images["t2"].shape == ref.shape
        np.testing.assert_allclose(patient.images["t2"], ref, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(patient.spacing_mm, truth["t2_spacing"], rtol=1e-4)
        for seq in (
            "t1",
            "t1ce",
        ):  # same grid in this generator, so resampling should be (nearly) the identity
            diff = np.abs(patient.images[seq] - truth[f"{seq}_image"])
            assert float(diff.mean()) < 0.01 * float(truth[f"{seq}_image"].max()), seq
        if "mask" in truth.files:
            contoured += 1
            assert patient.mask is not None, "contoured patient ingested without a mask"
            got, want = patient.mask.astype(bool), truth["mask"].astype(bool)
            dice = 2 * (got & want).sum() / max(got.sum() + want.sum(), 1)
            assert dice > 0.95, f"mask Dice {dice:.3f}"
        else:
            assert patient.mask is None
    assert contoured >= 2
