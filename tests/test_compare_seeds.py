"""`nasofl-sim compare-seeds`: figures read from each compare.json, means and SDs, the ordering and the goals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import ConfigError
from simulations.seeds import format_summary, load_compares, ordering_verdict, summary


def _run(dice: float, aucs: dict[str, float], share: float | None = None) -> dict:
    if share is None:
        return {"dice": dice, "auc": {d: {"value": v} for d, v in aucs.items()}, "wall_seconds": 10.0}
    extra = {"gradcam": {d: {"core_share": share, "core_share_ci": [share - 0.1, share + 0.1]} for d in aucs}}
    return {
        "dice": dice,
        "auc": {d: {"value": v} for d, v in aucs.items()},
        "wall_seconds": 10.0,
        "extra": extra,
    }


def _compare(folder: Path, central: dict, federated: dict) -> Path:
    folder.mkdir(parents=True)
    ratios = {k: federated["auc"][k]["value"] / central["auc"][k]["value"] for k in central["auc"]}
    ratios["dice"] = federated["dice"] / central["dice"]
    (folder / "compare.json").write_text(
        json.dumps({"centralized": central, "federated": federated, "ratios": ratios})
    )
    return folder


def test_means_ordering_and_goals_come_from_the_runs_own_figures(tmp_path: Path) -> None:
    c = [
        {"t1+t2": 0.90, "t1ce": 0.80, "t1": 0.75, "t2": 0.70},
        {"t1+t2": 0.80, "t1ce": 0.82, "t1": 0.72, "t2": 0.74},
        {"t1+t2": 0.88, "t1ce": 0.78, "t1": 0.72, "t2": 0.70},
    ]
    folders = [
        _compare(
            tmp_path / f"seed{i}",
            _run(0.70, a, share=0.5 + 0.1 * i),
            _run(0.70 * 0.98, {k: v * 0.95 for k, v in a.items()}),
        )
        for i, a in enumerate(c)
    ]
    s = summary(load_compares(folders))
    st = s["stats"]["centralized"]
    assert st["t1+t2"]["mean"] == pytest.approx(0.86) and st["t1+t2"]["n"] == 3
    assert st["t1+t2"]["sd"] == pytest.approx(((0.04**2 + 0.06**2 + 0.02**2) / 3) ** 0.5)
    assert s["stats"]["ratio"]["dice"]["mean"] == pytest.approx(0.98)
    assert s["ordering"].endswith("holds on the mean")  # 0.86 > 0.80 > 0.73 > 0.713
    assert s["goals"] == {
        "centralized T1WI+T2WI AUC >= 0.85": True,
        "T1WI+T2WI the best of the four": True,
        "federated/centralized Dice >= 0.97": True,
        "federated/centralized T1WI+T2WI AUC >= 0.97, the federation's histogram AUC": False,  # 0.95 each seed
        "federated/centralized T1WI+T2WI AUC >= 0.97, federated models scored exactly": None,  # not scored
    }
    text = format_summary(s)
    assert "centralized T1WI+T2WI      0.900   0.800   0.880   0.860" in text
    assert (
        "T1WI+T2WI  seed0 0.50 [0.40, 0.60]; seed1 0.60 [0.50, 0.70]; seed2 0.70 [0.60, 0.80]; mean 0.60 over 3"
        in text
    )
    assert "goal federated/centralized T1WI+T2WI AUC >= 0.97, the federation's histogram AUC: NOT met" in text
    assert "scored exactly: cannot judge" in text and "fed exact" not in text


def test_the_first_break_of_the_seed_ordering_is_named() -> None:
    verdict = ordering_verdict({"t1+t2": 0.80, "t1ce": 0.78, "t1": 0.66, "t2": 0.69})
    assert "does NOT hold" in verdict and "T1WI 0.660 <= T2WI 0.690" in verdict
    assert "cannot judge (T1CE missing)" in ordering_verdict(
        {"t1+t2": 0.8, "t1ce": None, "t1": 0.7, "t2": 0.6}
    )


def test_a_folder_without_a_finished_compare_is_named(tmp_path: Path) -> None:
    (tmp_path / "seed0").mkdir()
    with pytest.raises(ConfigError, match=r"seed0/compare.json: not found"):
        load_compares([tmp_path / "seed0"])
    (tmp_path / "seed0" / "compare.json").write_text("{truncated")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_compares([tmp_path / "seed0"])


def _part(folder: Path, datasets: dict[str, float], dice: float = 0.7, lr: float = 0.001) -> Path:
    settings = {"run_config": {"datasets": ",".join(datasets), "cls-lr": lr}, "centralized": {"cls-lr": lr}}
    central = _run(dice, datasets, share=0.4)
    federated = _run(dice, {d: v * 0.9 for d, v in datasets.items()})
    path = _compare(folder, central, federated)
    data = json.loads((path / "compare.json").read_text())
    (path / "compare.json").write_text(json.dumps({**data, "settings": settings}))
    return path


def test_parts_of_one_seed_join_into_one_column(tmp_path: Path) -> None:
    a = _part(tmp_path / "a" / "seed0", {"t1+t2": 0.9})
    b = _part(tmp_path / "b" / "seed0", {"t1": 0.7, "t2": 0.6, "t1ce": 0.8})
    s = summary(load_compares([f"{a},{b}"]))
    assert s["seeds"] == ["seed0"]
    central = s["rows"]["centralized"]["seed0"]
    assert (central["t1+t2"], central["t1"], central["t2"], central["t1ce"]) == (0.9, 0.7, 0.6, 0.8)
    assert s["rows"]["ratio"]["seed0"]["t1"] == pytest.approx(0.9)  # recomputed from the joined figures
    assert s["ordering"].endswith("holds on the mean")
    assert s["gradcam_core_share"]["t1"]["seed0"][0] == 0.4 and central["wall_seconds"] == 20.0


@pytest.mark.parametrize(
    ("second", "named"),
    [
        ({"datasets": {"t1": 0.7}, "dice": 0.71}, "federated Dice 0.71 differs"),
        ({"datasets": {"t1": 0.7}, "lr": 0.003}, "settings differ"),
        ({"datasets": {"t1+t2": 0.8}}, r"dataset 't1\+t2' was also measured"),
    ],
)
def test_parts_that_cannot_be_one_seed_are_refused_naming_the_part(tmp_path: Path, second, named) -> None:
    a = _part(tmp_path / "a" / "seed0", {"t1+t2": 0.9})
    b = _part(tmp_path / "b" / "seed0", **second)
    with pytest.raises(ConfigError, match=named) as err:
        load_compares([f"{a},{b}"])
    assert str(b) in str(err.value)


def test_an_ordering_over_unequal_numbers_of_seeds_says_so(tmp_path: Path) -> None:
    full = _part(tmp_path / "seed0", {"t1+t2": 0.9, "t1ce": 0.8, "t1": 0.7, "t2": 0.6})
    half = _part(tmp_path / "seed1", {"t1+t2": 0.85})
    s = summary(load_compares([full, half]))
    assert "unequal numbers of seeds: T1WI+T2WI 2, T1CE 1, T1WI 1, T2WI 1" in s["ordering"]
    assert "unequal" not in summary(load_compares([full]))["ordering"]


def test_federated_models_scored_exactly_get_their_own_rows_and_goal(tmp_path: Path) -> None:
    """Compares that scored the federated bundle exactly (`federated_exact`) show it beside the federation's own
    histogram figures; parts of one seed join it and recompute its ratio."""
    a = _part(tmp_path / "a" / "seed0", {"t1+t2": 0.9})
    b = _part(tmp_path / "b" / "seed0", {"t1": 0.7})
    for path, exact in ((a, {"t1+t2": 0.88}), (b, {"t1": 0.70})):
        data = json.loads((path / "compare.json").read_text())
        data["federated_exact"] = {"dice": None, "auc": {d: {"value": v} for d, v in exact.items()}}
        (path / "compare.json").write_text(json.dumps(data))
    s = summary(load_compares([f"{a},{b}"]))
    assert s["rows"]["federated_exact"]["seed0"]["t1+t2"] == 0.88
    assert s["rows"]["ratio_exact"]["seed0"]["t1+t2"] == pytest.approx(0.88 / 0.9)
    assert s["rows"]["ratio_exact"]["seed0"]["t1"] == pytest.approx(1.0)
    assert s["rows"]["ratio"]["seed0"]["t1+t2"] == pytest.approx(0.9)  # the histogram figure is kept as it was
    goals = s["goals"]
    assert goals["federated/centralized T1WI+T2WI AUC >= 0.97, federated models scored exactly"] is True
    assert goals["federated/centralized T1WI+T2WI AUC >= 0.97, the federation's histogram AUC"] is False
    text = format_summary(s)
    assert "exact/centr T1WI+T2WI" in text and "fed exact   T1WI+T2WI" in text
    figures = [line[12:24].strip() for line in text.splitlines()]
    assert "fed exact   Dice" not in text and "T2WI" not in figures  # figures no seed has are left out
    assert "  T2WI " not in text and "  T1WI+T2WI  seed0 0.40" in text  # Grad-CAM: only datasets that ran
    # a second seed without exact scores: the exact goal is not judged on the one seed that has them
    c = _part(tmp_path / "c" / "seed1", {"t1+t2": 0.9})
    two = summary(load_compares([f"{a},{b}", c]))
    assert two["goals"]["federated/centralized T1WI+T2WI AUC >= 0.97, federated models scored exactly"] is None


def test_the_validation_figures_settings_are_chosen_on_are_shown_per_seed(tmp_path: Path) -> None:
    """Centralized: the kept epoch's validation AUC and the best validation Dice; federated: the kept round's
    pooled validation figures. Joined parts keep each dataset's."""
    a = _part(tmp_path / "a" / "seed0", {"t1+t2": 0.9})
    b = _part(tmp_path / "b" / "seed0", {"t1": 0.7})
    for path, d, cv, fv in ((a, "t1+t2", 0.83, 0.81), (b, "t1", 0.72, 0.70)):
        data = json.loads((path / "compare.json").read_text())
        data["centralized"]["extra"]["classifiers"] = {d: {"validation": {"value": cv}}}
        data["centralized"]["extra"]["segmenter"] = {"history": {"val Dice": [0.5, 0.74, 0.7]}}
        data["federated"]["extra"] = {
            "kept_rounds": {"seg": {"value": 0.71}, f"cls:{d}": {"round": 3, "value": fv}}
        }
        (path / "compare.json").write_text(json.dumps(data))
    s = summary(load_compares([f"{a},{b}"]))
    central, fed = s["rows"]["centralized_val"]["seed0"], s["rows"]["federated_val"]["seed0"]
    assert (central["t1+t2"], central["t1"], central["dice"]) == (0.83, 0.72, 0.74)
    assert (fed["t1+t2"], fed["t1"], fed["dice"]) == (0.81, 0.70, 0.71)
    assert central["t1ce"] is None and fed["t2"] is None
    text = format_summary(s)
    assert "validation: the figures settings are chosen on" in text
    assert "central val T1WI+T2WI      0.830" in text and "fed val     T1WI+T2WI      0.810" in text
