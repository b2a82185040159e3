"""Cohort-level properties of the synthetic generator: determinism, class ratio, contoured fraction, presets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from shared.errors import ConfigError
from simulations.synth.cohort import CohortConfig, allocate_npl, generate_cohort, site_plan
from simulations.synth.site_profile import GridPreset, draw_site_profiles

TINY_GRID = GridPreset(matrix=40, pixel_mm=(4.6, 4.8), n_slices=(6, 6), thickness_mm=(6.0,), gap_mm=(0.0,))


def fingerprint(out: Path) -> dict[str, tuple[str, str, str]]:
    """relative path -> (SOPInstanceUID, SeriesInstanceUID, sha1 of the pixel data) for every DICOM file."""
    prints = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file() or "_truth" in path.parts or path.suffix in (".csv", ".json"):
            continue
        ds = pydicom.dcmread(path)
        pixels = hashlib.sha1(ds.PixelData).hexdigest() if "PixelData" in ds else ""
        prints[str(path.relative_to(out))] = (ds.SOPInstanceUID, ds.SeriesInstanceUID, pixels)
    return prints


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    config = CohortConfig(
        sites=3, patients_per_site=(2, 2, 2), seed=11, grid=TINY_GRID, min_contoured_per_site=1
    )
    generate_cohort(tmp_path / "a", config, progress=False)
    generate_cohort(tmp_path / "b", config, progress=False)
    other = CohortConfig(
        sites=3, patients_per_site=(2, 2, 2), seed=12, grid=TINY_GRID, min_contoured_per_site=1
    )
    generate_cohort(tmp_path / "c", other, progress=False)
    a, b, c = fingerprint(tmp_path / "a"), fingerprint(tmp_path / "b"), fingerprint(tmp_path / "c")
    assert len(a) > 100 and a == b
    uids_a = {v[0] for v in a.values()}
    pixels_a = {v[2] for v in a.values()}
    assert not uids_a & {v[0] for v in c.values()}
    assert len(pixels_a & {v[2] for v in c.values()}) < len(pixels_a) // 10
    truth_a = np.load(next((tmp_path / "a" / "_truth" / "hospital-a").glob("*.npz")))
    truth_b = np.load(tmp_path / "b" / "_truth" / "hospital-a" / Path(truth_a.fid.name).name)
    np.testing.assert_array_equal(truth_a["t1ce_image"], truth_b["t1ce_image"])


def test_default_preset_class_ratio_and_contoured() -> None:
    config = CohortConfig.preset("default")
    assert config.sites == 3 and config.patients_per_site == (70, 70, 70)
    profiles = draw_site_profiles(config.seed, config.sites, config.grid, config.npl_fraction)
    npl = allocate_npl(profiles, config.patients_per_site, config.npl_fraction)
    assert sum(npl) == round(210 * 142 / 434)  # the seed's 292:142 ratio overall
    assert len(set(npl)) > 1, "per-site NPL prevalence varies around the seed ratio"
    for profile, n, k in zip(profiles, config.patients_per_site, npl, strict=True):
        plan = site_plan(profile, n, k, config)
        assert sum(e["label"] for e in plan) == k
        contoured = sum(e["contoured"] for e in plan)
        assert contoured >= 8 and abs(contoured / n - 0.2) < 0.05
        ids = [e["patient_id"] for e in plan]
        assert len(set(ids)) == n and all(i.startswith(profile.id_prefix) for i in ids)


def test_paper_preset_matches_seed_size() -> None:
    config = CohortConfig.preset("paper")
    assert sum(config.patients_per_site) == 434 and config.grid.matrix == 256
    profiles = draw_site_profiles(0, 3, config.grid)
    assert sum(allocate_npl(profiles, config.patients_per_site, config.npl_fraction)) == 142


def test_quirks_spread_over_first_three_sites() -> None:
    a, b, c = draw_site_profiles(5, 3)
    assert {a.vendor, b.vendor, c.vendor} == {"siemens", "ge", "philips"}
    assert {a.transfer_syntax, b.transfer_syntax, c.transfer_syntax} == {"explicit", "implicit", "jpeg2000"}
    assert {a.agent_mode, b.agent_mode, c.agent_mode} == {"filled", "empty", "absent"}
    assert a.instance_reversed and b.slice_location_omitted and not b.contour_image_refs and c.site_mapping
    assert c.rescale_slope is not None and a.rescale_slope is None
    assert len({a.field_t, b.field_t, c.field_t}) == 2


@pytest.mark.parametrize("kwargs", [{"sites": 0}, {"difficulty": -1.0}, {"patients": 1}, {"seed": -3}])
def test_bad_options_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        if "sites" in kwargs:
            draw_site_profiles(0, kwargs["sites"])
        else:
            CohortConfig.preset("default", **kwargs)
