"""End to end: ``nasofl-sim centralized --preset toy`` on generated synthetic hospitals, and in-process."""

from __future__ import annotations

import json

import pytest
import torch

from shared.errors import ConfigError
from simulations.centralized import run_centralized
from simulations.cli import main
from simulations.presets import PRESETS, preset_config
from simulations.toy_patients import make_toy_cohort

torch.set_num_threads(1)


def _check_outputs(out, results) -> None:
    for name in (
        "results.json",
        "roc_test.png",
        "MODEL_CARD.md",
        "models/segmenter.pt",
        "curves_segmenter.png",
    ):
        assert (out / name).is_file(), name
    assert list(out.glob("gradcam_*.png"))
    assert list((out / "models").glob("classifier_*.pt"))
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"dice", "auc", "settings", "weights_origin", "classifier_arch", "wall_seconds"}
    assert saved["classifier_arch"] == results["classifier_arch"]
    seg = saved["extra"]["segmenter"]
    assert seg["history"]["train loss"][-1] < seg["history"]["train loss"][0]  # the segmenter learns
    for entry in saved["auc"].values():
        assert 0.0 <= entry["ci"][0] <= entry["value"] <= entry["ci"][1] <= 1.0
    # Grad-CAM per dataset, the core share with a patient-bootstrap CI around it
    assert set(saved["extra"]["gradcam"]) == set(saved["auc"])
    for cam in saved["extra"]["gradcam"].values():
        if cam["core_share"] is not None:
            low, high = cam["core_share_ci"]
            assert 0.0 <= low <= cam["core_share"] <= high <= 1.0 and cam["n_patients"] >= 1


def test_bootstrap_mean_ci_brackets_the_mean_and_narrows_with_more_values() -> None:
    import numpy as np

    from simulations.centralized import bootstrap_mean_ci

    rng = np.random.default_rng(0)
    few, many = rng.normal(0.5, 0.1, 10), rng.normal(0.5, 0.1, 1000)
    lo_f, hi_f = bootstrap_mean_ci(few, seed=0)
    lo_m, hi_m = bootstrap_mean_ci(many, seed=0)
    assert lo_f < few.mean() < hi_f and lo_m < many.mean() < hi_m
    assert hi_m - lo_m < (hi_f - lo_f) / 5


@pytest.mark.slow
def test_centralized_in_process_on_toy_patients(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    patients = make_toy_cohort(20, size=32, depth=6)
    # roi-intensity "body": every test patient keeps its crops whatever mask the 3-epoch toy segmenter draws (on
    # some machines it covers the whole volume, leaving no tissue to reference and a test split without one class)
    cfg = preset_config("toy", {"roi-intensity": "body"})
    with caplog.at_level("INFO", logger="simulations.centralized"):
        results = run_centralized(patients, cfg, tmp_path, progress=False)
    # progress on long work: every epoch says which of how many, the validation figure and the time left
    assert "segmenter epoch 3/3: val Dice" in caplog.text and "s left)" in caplog.text
    assert "classifier t1+t2 epoch 2/2: val AUC" in caplog.text
    _check_outputs(tmp_path, results)
    assert set(results["auc"]) == {"t1", "t2", "t1ce", "t1+t2"}
    losses = [c["history"]["train loss"] for c in results["extra"]["classifiers"].values()]
    assert sum(h[-1] < h[0] for h in losses) >= 3  # classifiers learn (on most datasets at 2 epochs)


@pytest.mark.slow
def test_centralized_cli_toy_on_synthetic_hospitals(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["centralized", "--preset", "toy", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert (out / "cohort" / "hospital-a" / "labels.csv").is_file()
    results = json.loads((out / "results.json").read_text())
    _check_outputs(out, results)
    assert results["extra"]["data"]["synthetic"] is True
    printed = capsys.readouterr().out
    assert "Dice (segmenter)" in printed and "0.876" in printed and "AUC T1WI+T2WI" in printed


def test_presets_and_bad_override() -> None:
    assert preset_config("default").cls.arch == "resnet101"
    assert preset_config("paper").cls.image_size == 224
    assert set(PRESETS) == {"toy", "default", "paper"}
    with pytest.raises(ConfigError, match="did you mean 'cls-arch'"):
        preset_config("toy", {"cls-ach": "resnet18"})
    assert main(["centralized", "--preset", "toy", "--set", "cls-epochs=-3", "--out", "/nonexistent/x"]) == 2


def test_reuse_saved_segmenter_and_refuse_a_mismatch(tmp_path) -> None:
    from shared.errors import ModelMismatchError
    from shared.models import build_segmenter
    from simulations.centralized import load_segmentation_stage

    cfg = preset_config("toy")
    path = tmp_path / "segmenter.pt"
    torch.save(build_segmenter(cfg.seg).state_dict(), path)
    patients = make_toy_cohort(10, size=32, depth=4)
    model, summary = load_segmentation_stage(path, patients, cfg, torch.device("cpu"))
    assert summary["test_n_patients"] == 2 and 0.0 <= summary["test_dice"] <= 1.0
    with pytest.raises(ModelMismatchError, match="--segmenter"):
        load_segmentation_stage(
            path, patients, preset_config("toy", {"seg-encoder": "resnet34"}), torch.device("cpu")
        )
