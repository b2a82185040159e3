"""Per-site options of the synthetic generator: one shared scanner, explicit NPL fraction per site."""

from __future__ import annotations

import csv
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pydicom
import pytest

from shared.errors import ConfigError
from simulations.run_cmd import scenario_cohort
from simulations.scenarios import SCENARIOS
from simulations.synth.cohort import CohortConfig, generate_cohort, npl_counts
from simulations.synth.site_profile import (
    SCANNER_FIELDS,
    GridPreset,
    SiteProfile,
    draw_site_profiles,
)

TINY_GRID = GridPreset(matrix=40, pixel_mm=(4.6, 4.8), n_slices=(6, 6), thickness_mm=(6.0,), gap_mm=(0.0,))
#: a grid whose draws differ per site (pixel size, slice count, thickness, gap), unlike TINY_GRID
VARIED_GRID = GridPreset(matrix=32, pixel_mm=(4.0, 6.0), n_slices=(6, 8), thickness_mm=(6.0, 7.0, 8.0))
#: profile fields that change pixel values: all must be shared by ``same_scanner``
PIXEL_FIELDS = {
    "field_t", "pixel_mm", "n_slices", "slice_thickness_mm", "slice_gap_mm", "tilt_deg", "t2_fat_sat",
    "t1ce_fat_sat", "gamma", "bias_sd", "snr", "muscle_level", "bits_stored", "rescale_slope",
}  # fmt: skip


def tiny(**kwargs) -> CohortConfig:
    return CohortConfig(seed=4, grid=TINY_GRID, min_contoured_per_site=1, **kwargs)


def site_labels(out: Path, site: str) -> tuple[int, int]:
    """(NPL count in labels.csv, NPL count in the _truth npz files) of one site."""
    with open(out / site / "labels.csv", newline="") as fh:
        csv_npl = sum(row["diagnosis"] == "NPL" for row in csv.DictReader(fh))
    truth_npl = sum(int(np.load(p)["label"]) for p in (out / "_truth" / site).glob("*.npz"))
    return csv_npl, truth_npl


def test_npl_fraction_per_site_sets_each_site_class_count(tmp_path: Path) -> None:
    fractions = (0.0, 0.5, 0.86)
    config = tiny(sites=3, patients_per_site=(4, 6, 7), npl_fraction_per_site=fractions)
    summary = generate_cohort(tmp_path, config, progress=False)
    expected = {"hospital-a": 0, "hospital-b": 3, "hospital-c": 6}  # round(f * n): 0, 3, 6.02 -> 6
    assert {site: site_labels(tmp_path, site) for site in expected} == {
        k: (v, v) for k, v in expected.items()
    }
    assert {site: s["NPL"] for site, s in summary.per_site.items()} == expected
    sites = json.loads((tmp_path / "_truth" / "cohort.json").read_text())["sites"]
    assert [s["npl_prevalence"] for s in sites] == list(fractions)


def test_npl_counts_round_half_up_and_default_still_allocates_overall_ratio() -> None:
    config = tiny(sites=3, patients_per_site=(24, 24, 24), npl_fraction_per_site=(0.1, 0.33, 0.6))
    profiles = draw_site_profiles(config.seed, 3, config.grid, npl_per_site=config.npl_fraction_per_site)
    assert npl_counts(profiles, config) == [2, 8, 14]
    halves = tiny(sites=2, patients_per_site=(5, 3), npl_fraction_per_site=(0.5, 0.5))
    assert npl_counts(profiles[:2], halves) == [3, 2]  # 2.5 -> 3, 1.5 -> 2
    default = tiny(sites=3, patients_per_site=(24, 24, 24))
    counts = npl_counts(draw_site_profiles(default.seed, 3, default.grid), default)
    assert sum(counts) == round(72 * 142 / 434) and counts != [2, 8, 14]


def test_same_scanner_shares_scanner_fields_and_keeps_dialects() -> None:
    assert PIXEL_FIELDS <= set(SCANNER_FIELDS)
    drawn = draw_site_profiles(9, 5, VARIED_GRID)
    shared = draw_site_profiles(9, 5, VARIED_GRID, same_scanner=True)
    for name in (f.name for f in fields(SiteProfile)):
        values = [json.dumps(getattr(p, name)) for p in shared]
        if name in SCANNER_FIELDS:
            assert values == [json.dumps(getattr(drawn[0], name))] * 5, name
        elif name != "notes":
            assert values == [json.dumps(getattr(p, name)) for p in drawn], name
    varied = {n for n in SCANNER_FIELDS if len({json.dumps(getattr(p, n)) for p in drawn}) > 1}
    assert {"vendor", "field_t", "snr", "muscle_level", "pixel_mm", "tilt_deg"} <= varied
    assert {"transfer_syntax", "layout", "agent_mode", "mask_format"} <= {
        f.name for f in fields(SiteProfile) if len({json.dumps(getattr(p, f.name)) for p in shared[:4]}) > 1
    }


def scanner_headers(out: Path) -> dict[str, set[tuple]]:
    """site -> the set of scanner-describing header tuples over all its T2 MR images."""
    heads: dict[str, set[tuple]] = {}
    for path in out.rglob("*"):
        if not path.is_file() or "_truth" in path.parts or path.suffix in (".csv", ".json"):
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.get("Modality") != "MR" or ds.get("SeriesNumber") != 4:  # the T2 series
            continue
        site = path.relative_to(out).parts[0]
        heads.setdefault(site, set()).add(
            (
                ds.Manufacturer,
                ds.ManufacturerModelName,
                float(ds.MagneticFieldStrength),
                tuple(round(float(v), 4) for v in ds.PixelSpacing),
                float(ds.SliceThickness),
                int(ds.Rows),
                int(ds.BitsStored),
            )
        )
    return heads


def truth_spacing(out: Path, site: str) -> set[tuple[float, ...]]:
    return {tuple(np.load(p)["t2_spacing"].round(4).tolist()) for p in (out / "_truth" / site).glob("*.npz")}


def test_same_scanner_cohort_has_one_scanner_default_has_several(tmp_path: Path) -> None:
    kwargs = {"sites": 3, "patients_per_site": (2, 2, 2), "seed": 4, "grid": VARIED_GRID}
    generate_cohort(
        tmp_path / "same", CohortConfig(**kwargs, same_scanner=True, min_contoured_per_site=1), False
    )
    generate_cohort(tmp_path / "drawn", CohortConfig(**kwargs, min_contoured_per_site=1), False)
    sites = ("hospital-a", "hospital-b", "hospital-c")
    same, drawn = scanner_headers(tmp_path / "same"), scanner_headers(tmp_path / "drawn")
    assert set(same) == set(drawn) == set(sites)
    assert len(set.union(*same.values())) == 1, same
    assert len(set.union(*drawn.values())) == 3, drawn
    assert len(set.union(*(truth_spacing(tmp_path / "same", s) for s in sites))) == 1
    assert len(set.union(*(truth_spacing(tmp_path / "drawn", s) for s in sites))) > 1
    meta = json.loads((tmp_path / "same" / "_truth" / "cohort.json").read_text())
    assert meta["config"]["same_scanner"] is True
    for name in SCANNER_FIELDS:
        assert len({json.dumps(s[name]) for s in meta["sites"]}) == 1, name
    assert len({s["transfer_syntax"] for s in meta["sites"]}) == 3  # dialects stay per site


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [
        ((0.1, 0.2), r"npl_fraction_per_site has 2 entries for sites=3"),
        ((0.1, 1.2, 0.3), r"npl_fraction_per_site\[1\]=1\.2 is out of range"),
        ((0.1, 0.2, -0.01), r"npl_fraction_per_site\[2\]=-0\.01 is out of range"),
        ((0.1, float("nan"), 0.3), r"npl_fraction_per_site\[1\]=nan"),
        ((0.1, "0.2", 0.3), r"npl_fraction_per_site\[1\]='0\.2'"),
        ("0.1,0.2,0.3", r"npl_fraction_per_site='0\.1,0\.2,0\.3' is not a sequence"),
    ],
)
def test_bad_npl_fraction_per_site_raises_naming_the_field(fractions: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        tiny(sites=3, patients_per_site=(4, 4, 4), npl_fraction_per_site=fractions)


def test_bad_same_scanner_raises() -> None:
    with pytest.raises(ConfigError, match="same_scanner='yes'"):
        tiny(sites=2, patients_per_site=(4, 4), same_scanner="yes")


def test_list_of_fractions_is_stored_as_tuple() -> None:
    config = tiny(sites=2, patients_per_site=(4, 4), npl_fraction_per_site=[0.25, 1])
    assert config.npl_fraction_per_site == (0.25, 1.0)
    hash(config)


def test_alike_and_label_skew_scenarios_reach_the_generator() -> None:
    alike, skew = scenario_cohort(SCENARIOS["alike"], 0), scenario_cohort(SCENARIOS["label-skew"], 0)
    assert alike.same_scanner and not skew.same_scanner
    for config, counts in ((alike, [8, 8, 8]), (skew, [2, 8, 14])):
        assert config.patients_per_site == (24, 24, 24)
        profiles = draw_site_profiles(config.seed, config.sites, npl_per_site=config.npl_fraction_per_site)
        assert npl_counts(profiles, config) == counts
    assert SCENARIOS["label-skew"].run_config["strategy"] == "fedprox"
    default = scenario_cohort(SCENARIOS["default"], 0)
    assert not default.same_scanner and default.npl_fraction_per_site is None
    assert not any("generator limit" in s.description for s in SCENARIOS.values())


def test_an_undiagnosed_share_leaves_rows_out_of_labels_csv_and_nothing_else(tmp_path: Path) -> None:
    """``undiagnosed_fraction``: that share of each site's patients has no labels.csv row; their files, and every
    other patient's, are the ones the same seed writes without it; ``_truth`` keeps their class."""
    plain = generate_cohort(tmp_path / "plain", tiny(sites=2, patients_per_site=(4, 6)), progress=False)
    summary = generate_cohort(
        tmp_path / "half", tiny(sites=2, patients_per_site=(4, 6), undiagnosed_fraction=0.5), progress=False
    )
    assert {s: r["undiagnosed"] for s, r in summary.per_site.items()} == {"hospital-a": 2, "hospital-b": 3}
    assert {s: r["undiagnosed"] for s, r in plain.per_site.items()} == {"hospital-a": 0, "hospital-b": 0}
    truth = json.loads((tmp_path / "half" / "_truth" / "cohort.json").read_text())["patients"]
    for site, n in (("hospital-a", 4), ("hospital-b", 6)):
        with open(tmp_path / "half" / site / "labels.csv", newline="") as fh:
            rows = {row["patient_id"] for row in csv.DictReader(fh)}
        mine = [p for p in truth if p["site"] == site]
        assert len(mine) == n and rows == {p["patient_id"] for p in mine if p["diagnosed"]}
        assert len(rows) == n - summary.per_site[site]["undiagnosed"]
    files = lambda root: {  # noqa: E731
        p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "labels.csv"
        and "_truth" not in p.parts
    }  # fmt: skip
    assert files(tmp_path / "plain") == files(tmp_path / "half")
    with pytest.raises(ConfigError, match="undiagnosed share 1.0 out of range"):
        tiny(sites=2, patients_per_site=(4, 6), undiagnosed_fraction=1.0)


def test_the_seed_size_scenario_is_the_synth_command_with_145_patients_per_hospital() -> None:
    """README's seed-size figures were measured on `nasofl-sim synth DIR --seed S --patients 145` cohorts: the
    scenario must generate exactly those (435 patients, the seed study's 434)."""
    for seed in (0, 2):
        config = scenario_cohort(SCENARIOS["seed-size"], seed)
        assert config == CohortConfig.preset("default", patients=145, seed=seed)
        assert sum(config.patients_per_site) == 435
