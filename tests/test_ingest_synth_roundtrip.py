"""Round trip: the synthetic-hospital generator's DICOM -> the real loader -> ground truth in ``_truth``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data.site import load_site
from shared.pseudonym import pseudonym
from simulations.synth.cohort import CohortConfig, generate_cohort
from simulations.synth.site_profile import GridPreset


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    grid = GridPreset(matrix=32, pixel_mm=(5.0, 6.0), n_slices=(8, 9))
    config = CohortConfig(sites=3, patients_per_site=(3, 3, 3), seed=3, grid=grid, min_contoured_per_site=3)
    generate_cohort(out, config, progress=False)
    return out


def test_loader_recovers_sequences_masks_and_labels(cohort_dir):
    sites = sorted(p for p in cohort_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert len(sites) == 3
    for site in sites:
        cohort = load_site(site)
        assert cohort.report.ok, cohort.report.blocking
        truth = {pseudonym(f.stem): np.load(f) for f in (cohort_dir / "_truth" / site.name).glob("*.npz")}
        assert {p.pseudonym for p in cohort.patients} == set(truth)
        for p in cohort.patients:
            t = truth[p.pseudonym]
            assert p.label == int(t["label"])
            series = {n.split(":")[0]: n.rsplit(" ", 1)[-1] for n in p.notes if ": series " in n}
            for seq in ("t1", "t2", "t1ce"):
                assert series[seq] == str(t[f"{seq}_series_uid"]), (site.name, seq)
            np.testing.assert_allclose(p.images["t2"], t["t2_image"], rtol=1e-5, atol=1e-3)
            if p.mask is not None:
                inter = int((p.mask & t["truth_mask"]).sum())
                dice = 2 * inter / (int(p.mask.sum()) + int(t["truth_mask"].sum()))
                assert dice > 0.9, (site.name, dice)
        assert sum(p.mask is not None for p in cohort.patients) >= 1
