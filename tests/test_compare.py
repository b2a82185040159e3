"""nasofl-sim compare: fair settings and the side-by-side figures (the full run is exercised by hand/bench)."""

from __future__ import annotations

import pytest

from server.config import federation_from_run_config, pipeline_from_run_config
from shared.app_config import app_defaults as default_run_config
from shared.app_config import parse_cli_value
from shared.errors import ConfigError
from simulations.compare import (
    centralized_config,
    format_compare_table,
    ratios,
    target_verdict,
)
from simulations.scenarios import SCENARIOS


def _res(dice, wall=100.0, **auc):
    return {
        "dice": dice,
        "auc": {k.replace("_", "+"): {"value": v} for k, v in auc.items()},
        "wall_seconds": wall,
    }


def test_centralized_gets_the_same_passes_over_the_data():
    rc = {**default_run_config(), "seg-rounds": 3, "seg-epochs": 2, "cls-rounds": 4, "cls-epochs": 1}
    cfg, fed = centralized_config(rc)
    assert cfg.seg_epochs == 6
    assert cfg.cls_epochs == 4
    assert fed.seg_rounds == 3
    # every other pipeline setting is the federated one
    assert cfg.cls.arch == rc["cls-arch"]
    assert cfg.seg.image_size == rc["seg-image-size"]


def test_the_default_pretrains_the_backbones_and_the_pooled_run_as_many_epochs():
    """The defaults (since 2026-12-02) pretrain every classifier backbone, 6 rounds x 1 local epoch; the pooled
    run of `compare` pretrains 6 epochs, as measured (README, Results)."""
    from server.settings_check import check_study_settings

    cfg, fed = centralized_config(default_run_config())
    assert (fed.cls_pretrain_rounds, cfg.cls.pretrain_epochs) == (6, 6)
    check_study_settings(fed, pipeline_from_run_config(default_run_config()))  # on together: accepted


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="cls-rounds"):
        centralized_config({**default_run_config(), "cls-roundz": 2})


def test_ratios_and_table():
    fed = _res(0.80, wall=300.0, t1=0.70, t2=0.60, t1ce=0.75, t1_t2=0.90)
    cen = _res(0.82, wall=200.0, t1=0.70, t2=0.65, t1ce=0.80, t1_t2=0.88)
    r = ratios(fed, cen)
    assert r["dice"] == pytest.approx(0.80 / 0.82)
    assert r["t1+t2"] == pytest.approx(0.90 / 0.88)
    assert r["wall_seconds"] == pytest.approx(1.5)
    assert ratios(None, cen)["dice"] is None
    table = format_compare_table({"federated": fed, "centralized": cen, "hospital-a": None}, r)
    assert "hospital-a" in table and "federated/centralized" in table
    assert "0.976" in table  # Dice ratio 0.80 / 0.82
    verdict = target_verdict(r)
    assert verdict[0].startswith("Dice: federated/centralized 0.976 >= 0.97")
    assert "T1WI+T2WI AUC" in verdict[1] and ">=" in verdict[1]


def test_set_values_parse_as_toml():
    assert parse_cli_value("3") == 3
    assert parse_cli_value("true") is True
    assert parse_cli_value('"fedprox"') == "fedprox"
    assert parse_cli_value("fedprox") == "fedprox"
    assert parse_cli_value("t1,t2") == "t1,t2"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_run_config_is_valid(name):
    """A preset with a misspelt or out-of-range key would fail only minutes into `nasofl-sim run`."""
    scenario = SCENARIOS[name]
    rc = {**default_run_config(), **scenario.run_config}
    fed = federation_from_run_config(rc)
    pipeline_from_run_config(rc)
    assert fed.min_sites <= sum(1 for n in scenario.patients if n > 0)


def test_the_default_scenario_tests_on_an_external_hospital_that_never_trains():
    """README: the default run's fourth hospital only evaluates, on all its patients (CIs about +-0.1); the
    three others train. Its name must be the generator's fourth site, or the run would train on it."""
    from simulations.scenarios import EXTERNAL_TEST_PATIENTS
    from simulations.synth.site_profile import site_name

    scenario = SCENARIOS["default"]
    fed = federation_from_run_config({**default_run_config(), **scenario.run_config})
    assert scenario.patients == (40, 40, 40, EXTERNAL_TEST_PATIENTS) and EXTERNAL_TEST_PATIENTS >= 80
    assert fed.eval_only_names == frozenset({site_name(3)}) == frozenset({"hospital-d"})
    assert fed.min_sites <= 3


def test_run_on_own_folders_names_the_folder_the_default_keeps_from_training(tmp_path):
    from simulations.run_cmd import scenario_line

    for name in ("hospital-a", "hospital-b", "hospital-d", "_cache"):
        (tmp_path / name).mkdir()
    line = scenario_line(SCENARIOS["default"], {}, tmp_path)
    assert line.startswith("its settings on the 3 site folder(s)")
    assert "evaluation only, never trained on: hospital-d" in line
    assert "evaluation only" not in scenario_line(SCENARIOS["default"], {"eval-only-sites": ""}, tmp_path)
    assert "evaluation only" not in scenario_line(SCENARIOS["large"], {}, tmp_path)


def test_a_set_value_replaces_the_scenario_value_once():
    """Flower refuses a run-config string naming a key twice (seen with --preset large --set cls-rounds=8)."""
    from shared.app_config import parse_sets
    from simulations.run_cmd import run_config_string

    text = run_config_string({"cls-rounds": 4, "seed": 0}, parse_sets(["cls-rounds=8", 'datasets="t1+t2"']))
    assert text.count("cls-rounds=") == 1 and "cls-rounds=8" in text and 'datasets="t1+t2"' in text
    assert "seed=0" in text


def test_the_external_line_names_an_evaluation_only_site_whose_test_is_missing():
    """Two external sites, one without a usable test reply: the pooled figures come from the other alone, and the
    line must say so rather than present them as both sites' (no success reported on missing data)."""
    from server.outcome import FinalTest
    from server.report import external_line

    stats = {"hospital-d": {"n": 1}}
    test = FinalTest({}, {}, {}, {"hospital-e": "no reply"}, stats, ["hospital-a"], ["hospital-d", "hospital-e"])
    assert test.external_missing() == ["hospital-e"] and test.external_sums() == [stats["hospital-d"]]
    entry = {"value": 0.8, "ci": [0.7, 0.9], "n_patients": 90}
    results = {
        "extra": {
            "eval_only_pooled": {
                "sites": ["hospital-d", "hospital-e"],
                "missing": test.external_missing(),
                "dice": 0.7,
                "auc": {"t2": entry},
            }
        }
    }
    line = external_line(results, ("t2",))
    assert line is not None and line.endswith("NOT in these figures (no usable test reply): hospital-e")
    results["extra"]["eval_only_pooled"]["missing"] = []
    assert "NOT in these figures" not in external_line(results, ("t2",))
