"""Reader comparison: paired DeLong against R's pROC, the CSV comparison, simulated readers, the CLIs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.errors import SiteDataError
from shared.metrics.delong import paired_delong_test
from shared.pseudonym import pseudonym
from shared.readers import load_reader_csv, run_comparison
from shared.readers.compare import operating_points
from simulations.readers import five_point_ratings

RSCRIPT = shutil.which("Rscript")

# fixed data set with ties within and across classes (5-point reader, model scores with repeated values)
TRUTH = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]
READER = [1, 2, 2, 3, 1, 4, 5, 3, 4, 5, 2, 3, 4, 1, 5, 3, 2, 2, 4, 5, 3, 3, 1, 2, 4]
MODEL = [0.1, 0.3, 0.35, 0.4, 0.2, 0.8, 0.9, 0.6, 0.65, 0.95, 0.3, 0.5, 0.7, 0.3, 0.85, 0.55, 0.3, 0.45, 0.5, 0.9,
         0.6, 0.6, 0.25, 0.4, 0.75]  # fmt: skip

R_SCRIPT = """
suppressMessages(library(pROC))
y <- c({y}); a <- c({a}); b <- c({b})
r1 <- roc(y, a, levels = c(0, 1), direction = "<", quiet = TRUE)
r2 <- roc(y, b, levels = c(0, 1), direction = "<", quiet = TRUE)
t <- roc.test(r1, r2, method = "delong", paired = TRUE)
cat(sprintf("%.15g %.15g %.15g %.15g\\n", t$statistic, t$p.value, auc(r1), auc(r2)))
"""


@pytest.mark.skipif(RSCRIPT is None, reason="Rscript with r-cran-proc is not installed")
def test_paired_delong_matches_r_proc_roc_test() -> None:
    script = R_SCRIPT.format(
        y=",".join(map(str, TRUTH)), a=",".join(map(str, MODEL)), b=",".join(map(str, READER))
    )
    result = subprocess.run([RSCRIPT, "-e", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    z_r, p_r, auc_a_r, auc_b_r = map(float, result.stdout.split())
    z, p, auc_a, auc_b = paired_delong_test(np.array(MODEL), np.array(READER), np.array(TRUTH))
    assert abs(auc_a - auc_a_r) < 1e-9 and abs(auc_b - auc_b_r) < 1e-9
    assert abs(z - z_r) < 1e-6, (z, z_r)
    assert abs(p - p_r) < 1e-6, (p, p_r)
    assert abs(z) > 0.1  # the fixed data set does separate the two tests a little: a real comparison


def test_paired_delong_is_antisymmetric_and_refuses_tiny_samples() -> None:
    y, a, b = np.array(TRUTH), np.array(MODEL), np.array(READER, dtype=float)
    z1, p1, _, _ = paired_delong_test(a, b, y)
    z2, p2, _, _ = paired_delong_test(b, a, y)
    assert z1 == pytest.approx(-z2) and p1 == pytest.approx(p2)
    with pytest.raises(ValueError, match="at least 2 NPL"):
        paired_delong_test(np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.1, 0.8]), np.array([0, 0, 1]))


def test_operating_points_by_hand() -> None:
    ops = operating_points(np.array([1, 2, 3, 3, 5]), np.array([0, 0, 1, 0, 1]))
    assert [o["cut"] for o in ops] == [2, 3, 5]
    assert ops[1] == {"cut": 3.0, "sensitivity": 1.0, "specificity": 2 / 3}
    assert ops[2] == {"cut": 5.0, "sensitivity": 0.5, "specificity": 1.0}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_comparison_writes_table_json_and_a_roc_figure(tmp_path) -> None:
    import matplotlib.image as mpimg

    rows = [
        {"patient": f"p{i}", "truth": "NPL" if t else "NPC", "reader_junior": r, "model_t1_t2": m}
        for i, (t, r, m) in enumerate(zip(TRUTH, READER, MODEL, strict=True))
    ]
    result, text = run_comparison(write_csv(tmp_path / "r.csv", rows), tmp_path / "out")
    assert result["n_npl"] == sum(TRUTH) and set(result["auc"]) == {"junior", "t1_t2"}
    test = result["paired_delong"][0]
    assert (test["model"], test["reader"]) == ("t1_t2", "junior")
    assert "paired DeLong" in text and "junior" in text
    saved = json.loads((tmp_path / "out" / "readers.json").read_text())
    assert saved["auc"]["junior"]["operating_points"][0]["cut"] == 2.0
    img = mpimg.imread(tmp_path / "out" / "readers_roc.png")[..., :3]
    assert (img.mean(axis=-1) < 0.5).mean() > 0.005


def test_bad_csv_is_refused_naming_line_and_column(tmp_path) -> None:
    rows = [{"patient": "a", "truth": "NPL", "reader_x": "3", "model_y": "0.4"} for _ in range(3)] + [
        {"patient": "b", "truth": "maybe", "reader_x": "3", "model_y": "0.4"}
    ]
    with pytest.raises(SiteDataError, match="line 5: truth 'maybe'"):
        load_reader_csv(write_csv(tmp_path / "bad.csv", rows))
    rows[3]["truth"], rows[2]["model_y"] = "NPC", "high"
    with pytest.raises(SiteDataError, match="line 4, column model_y"):
        load_reader_csv(write_csv(tmp_path / "bad2.csv", rows))


def test_simulated_readers_reach_their_skill() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(3000, int), np.ones(3000, int)]
    from shared.metrics.auc import auc

    junior, senior = five_point_ratings(y, 0.77, rng), five_point_ratings(y, 0.84, rng)
    assert set(np.unique(junior)) == {1, 2, 3, 4, 5}
    assert 0.73 < auc(junior, y) < 0.78 and 0.80 < auc(senior, y) < 0.85  # rating ties cost ~0.01


def test_sim_readers_cli_on_a_cohort_truth_and_predict_summary(tmp_path, capsys) -> None:
    from simulations.cli import main

    rng = np.random.default_rng(1)
    patients = [{"patient_id": f"HX{i}", "label": int(i % 3 == 0)} for i in range(30)]
    (tmp_path / "cohort" / "_truth").mkdir(parents=True)
    (tmp_path / "cohort" / "_truth" / "cohort.json").write_text(json.dumps({"patients": patients}))
    summary = [
        {
            "patient": pseudonym(p["patient_id"]),
            "p_npl_recommended": "",
            "p_npl_t2": f"{0.3 * p['label'] + rng.random() * 0.7:.4f}",
            "p_npl_t1": "" if i == 0 else f"{rng.random():.4f}",
        }
        for i, p in enumerate(patients)
    ]
    write_csv(tmp_path / "summary.csv", summary)
    rc = main(["readers", "--cohort", str(tmp_path / "cohort"), "--predictions", str(tmp_path / "summary.csv"),
               "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1 patient(s)" in printed and "junior" in printed and "senior" in printed
    table = load_reader_csv(tmp_path / "out" / "readers.csv")
    assert len(table.patients) == 29 and set(table.readers) == {"junior", "senior"}
    assert set(table.models) == {"t2", "t1"}
