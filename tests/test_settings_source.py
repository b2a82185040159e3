"""Settings: one source of defaults (pyproject.toml), one coercer, one unknown-key rule, every key reachable."""

from __future__ import annotations

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from client.app import pipeline_config
from server.config import CLIENT_KEYS, federation_from_run_config, federation_keys, pipeline_from_run_config
from shared.app_config import app_defaults, coerce, parse_sets
from shared.config import PipelineConfig, pipeline_keys
from shared.errors import ConfigError
from simulations.app_folder import build_app_folder
from simulations.presets import PRESETS, preset_config
from simulations.run_cmd import run_config_string, validate_run_config
from simulations.scenarios import SCENARIOS

#: a valid value different from the default, for every pipeline key (a new key must be added here)
OTHER_VALUE = {
    "seg-encoder": "resnet34",
    "seg-in-sequences": "t2,t1ce,t1",
    "seg-image-size": 96,
    "seg-lr": 0.002,
    "seg-batch-size": 4,
    "seg-loss": "dice",
    "seg-slices-per-patient": 6,
    "seg-augment": "flip,intensity",
    "seg-lr-schedule": "cosine",
    "seg-local-optimizer": "restart",
    "seg-norm": "group",
    "seg-weight-ema": 0.5,
    "cls-arch": "resnet50",
    "cls-weights": "file:/srv/weights/resnet101.pth",
    "cls-image-size": 48,
    "cls-slices-per-patient": 3,
    "cls-lr": 0.0005,
    "cls-batch-size": 8,
    "cls-warmup": 0.2,
    "cls-label-smoothing": 0.05,
    "cls-weight-decay": 0.001,
    "cls-augment": "flip,shift",
    "cls-mixup": 0.2,
    "cls-tta": "flip",
    "cls-local-optimizer": "restart",
    "cls-pretrain-epochs": 4,
    "cls-crop-means": True,
    "cls-input-norm": "batch",
    "cls-ensemble": 2,
    "cls-linear-member": True,
    "roi-intensity": "peritumoral",
    "roi-context": "box",
    "cls-aggregation": "mean",  # the only rule today: the value is set, and must come back
    "datasets": "t1+t2,t1ce",
    "seg-epochs": 3,
    "cls-epochs": 3,
    "roi-margin": 6,
    "device": "cpu",
    "amp": False,
    "seed": 7,
    "hist-bins": 200,
    "dp": "central",
    "dp-epsilon": 3.0,
    "dp-delta": 1e-4,
    "dp-max-grad-norm": 2.0,
    "dp-accountant": "prv",
    "dp-hist-noise": 2.0,
}

#: the other keys a value of OTHER_VALUE needs to pass the run's checks (the default strategy fedavgm is refused
#: under dp = "central"; pretraining epochs need pretraining rounds)
NEEDS = {"dp": {"strategy": "fedavg"}, "cls-pretrain-epochs": {"cls-pretrain-rounds": 2}}


def test_every_run_config_key_has_one_home():
    """pyproject's table holds exactly the pipeline, federation and client keys: nothing missing, nothing extra."""
    keys = set(app_defaults())
    assert set(pipeline_keys()) <= keys, sorted(set(pipeline_keys()) - keys)
    assert set(federation_keys()) <= keys, sorted(set(federation_keys()) - keys)
    assert set(CLIENT_KEYS) <= keys
    assert keys == set(pipeline_keys()) | set(federation_keys()) | set(CLIENT_KEYS)


def test_the_defaults_are_pyprojects():
    cfg = PipelineConfig.defaults().to_mapping()
    defaults = app_defaults()
    for key, value in cfg.items():
        assert value == defaults[key], key


def test_every_pipeline_key_can_be_set_through_flwr_run_and_nasofl_sim_set(tmp_path):
    assert set(OTHER_VALUE) == set(pipeline_keys()), "OTHER_VALUE must name every pipeline key"
    app = build_app_folder(tmp_path / "app")
    defaults = PipelineConfig.defaults().to_mapping()
    for key, value in OTHER_VALUE.items():
        if key != "cls-aggregation":
            assert value != defaults[key], f"{key}: pick a value other than the default"
        # flwr run . --run-config "key=value": Flower's own parse + fuse with the app's pyproject
        text = run_config_string({}, {key: value})
        fused = get_fused_config_from_dir(app, parse_config_args([text]))
        assert pipeline_from_run_config(fused).to_mapping()[key] == value, key
        assert pipeline_config(fused).to_mapping()[key] == value, key  # the ClientApp reads the same
        # nasofl-sim run --set key=value (a bare word, as a user types it)
        raw = str(value).lower() if isinstance(value, bool) else str(value)
        sets = parse_sets([f"{key}={raw}"])
        validate_run_config({**sets, **NEEDS.get(key, {})})
        assert PipelineConfig.defaults(sets).to_mapping()[key] == value, key


def test_an_unknown_key_is_refused_the_same_way_everywhere():
    rc = dict(app_defaults())
    rc["cls-arc"] = "resnet18"
    for build in (federation_from_run_config, pipeline_from_run_config, pipeline_config):
        with pytest.raises(ConfigError, match="did you mean 'cls-arch'"):
            build(rc)
    with pytest.raises(ConfigError, match="did you mean 'seg-rounds'"):
        validate_run_config(parse_sets(["seg-round=3"]))


def test_one_coercer_for_server_and_sites():
    rc = dict(app_defaults())
    for bad in ("yes", 1, "1"):  # the ClientApp used to accept these for a bool, the server did not
        rc_bad = {**rc, "amp": bad, "fedbn": bad}
        with pytest.raises(ConfigError, match="wrong type"):
            pipeline_config(rc_bad)
        with pytest.raises(ConfigError, match="wrong type"):
            federation_from_run_config(rc_bad)
    assert coerce("amp", "TRUE", bool) is True
    assert coerce("seed", 3.0, int) == 3
    with pytest.raises(ConfigError, match="seed=3.5 has the wrong type: expected int"):
        coerce("seed", 3.5, int)
    with pytest.raises(ConfigError, match="expected float"):
        coerce("cls-lr", True, float)


def test_presets_and_scenarios_state_only_what_they_change():
    defaults = app_defaults()
    for name, preset in PRESETS.items():
        same = {k: v for k, v in preset.items() if defaults.get(k) == v}
        assert not same, f"preset {name} repeats defaults {same}"
        preset_config(name)
    for name, scenario in SCENARIOS.items():
        same = {k: v for k, v in scenario.run_config.items() if defaults.get(k) == v}
        assert not same, f"scenario {name} repeats defaults {same}"
