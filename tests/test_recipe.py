"""``nasofl-sim recipe``: cross-validated screening on a synthetic cohort's train+val patients, test untouched."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from simulations.cli import main
from simulations.recipe import stratified_folds, truth_patients
from simulations.recipe_cmd import parse_variant
from simulations.synth.cohort import CohortConfig, generate_cohort


def test_parse_variant_reads_named_changes() -> None:
    assert parse_variant("aug:cls-augment=flip,shift;roi-margin=8") == (
        "aug",
        {"cls-augment": "flip,shift", "roi-margin": 8},
    )
    assert parse_variant("base:") == ("base", {})
    with pytest.raises(ConfigError, match="NAME:KEY=VALUE"):
        parse_variant("cls-augment=flip")


@pytest.mark.slow
def test_recipe_screens_without_test_patients(tmp_path, capsys) -> None:
    from dataclasses import replace

    from simulations.cohort_loading import TOY_GRID_ARGS
    from simulations.synth.site_profile import GridPreset

    cohort = tmp_path / "c0"
    config = replace(
        CohortConfig.preset("default", sites=2, patients=10, seed=0), grid=GridPreset(**TOY_GRID_ARGS)
    )
    generate_cohort(cohort, config, progress=False)
    patients = truth_patients(cohort)
    assert patients and {p.split for p in patients} <= {"train", "val"}  # test patients never loaded
    folds = stratified_folds(patients, 2, seed=0)
    for label in (0, 1):  # each fold holds both classes when the cohort has at least 2 of each
        assert {folds[p.pseudonym] for p in patients if p.label == label} == {0, 1}
    rc = main(["recipe", str(cohort), "--folds", "2", "--variant", "base:", "--variant", "aug:cls-augment=flip",
               "--set", "cls-arch=resnet18", "--set", "cls-image-size=16", "--set", "cls-epochs=1"])  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].split()[:3] == ["variant", "dataset", "c0"]
    rows = {line.split()[0]: line.split() for line in table[-2:]}
    assert set(rows) == {"base", "aug"}
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows.values())


def test_unknown_key_in_a_variant_is_named(tmp_path, capsys) -> None:
    rc = main(["recipe", str(tmp_path), "--variant", "x:cls-augmnet=flip"])
    assert rc != 0
    assert "cls-augmnet" in capsys.readouterr().err
