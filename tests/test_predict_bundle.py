"""A finished (tiny) centralized study -> model bundle -> ``nasofl-site predict`` on synthetic DICOM patients.

One module-scoped real bundle (toy preset: ResNet18 U-Net and classifiers at 32 px, trained in-process) and one
module-scoped prediction over a 3-patient synthetic site; the tests read what that wrote.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from client.cli import main as site_main
from client.predict.study import predict_study
from shared.bundle import load_bundle, load_state_strict
from shared.bundle.manifest import settings_fingerprint, write_manifest
from shared.data.dicom.index import index_tree
from shared.data.site import load_site
from shared.errors import BundleError, ModelMismatchError
from shared.pseudonym import pseudonym
from simulations.centralized import run_centralized
from simulations.presets import preset_config
from simulations.synth.cohort import CohortConfig, generate_cohort
from simulations.synth.site_profile import GridPreset
from simulations.toy_patients import make_toy_cohort

torch.set_num_threads(1)
DCIODVFY = shutil.which("dciodvfy")
TINY_GRID = GridPreset(
    matrix=48, pixel_mm=(4.0, 4.2), n_slices=(9, 9), thickness_mm=(5.0,), gap_mm=(0.0, 1.0)
)
CPU = torch.device("cpu")


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    torch.manual_seed(0)
    # roi-intensity "body": the crops need no reference tissue, so every classifier scores whatever mask the toy
    # segmenter draws (a toy model can cover the whole volume; that case has its own test below)
    cfg = preset_config("toy", {"roi-intensity": "body"})
    run_centralized(make_toy_cohort(20, size=32, depth=6), cfg, out, progress=False)
    return out / "bundle"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "cohort"
    config = CohortConfig(sites=2, patients_per_site=(3, 3), seed=3, grid=TINY_GRID, min_contoured_per_site=1)
    generate_cohort(out, config, progress=False)
    return out


@pytest.fixture(scope="module")
def predicted(bundle_dir: Path, cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    site = cohort / "hospital-b"
    before = tree_hash(site)
    out = tmp_path_factory.mktemp("predict")
    runs = predict_study(load_bundle(bundle_dir), site, out, CPU)
    return site, out, runs, before


def without_masks(src: Path, dst: Path) -> Path:
    """Copy of a site folder without its RTSTRUCT / SEG objects."""
    shutil.copytree(src, dst)
    for rel, entry in index_tree(dst).items():
        if any(h.modality in ("RTSTRUCT", "SEG") for h in entry.headers):
            (dst / rel).unlink()
    return dst


def test_bundle_has_manifest_settings_and_validation_operating_points(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert set(manifest["files"]) >= {"settings.json", "card.json", "MODEL_CARD.md", "segmenter.pt"}
    card = json.loads((bundle_dir / "card.json").read_text())
    assert card["dp"] == {"enabled": False}
    assert card["settings_fingerprint"] == manifest["settings_fingerprint"]
    for info in card["classifiers"].values():
        val = info["validation"]
        assert 0.0 <= val["threshold"] <= 1.0 and 0.0 <= val["sensitivity"] <= 1.0
        assert val["ci"][0] <= val["value"] <= val["ci"][1]
    best = max(card["classifiers"], key=lambda d: card["classifiers"][d]["validation"]["value"])
    assert (
        card["classifiers"][card["recommended"]]["validation"]["value"]
        == card["classifiers"][best]["validation"]["value"]
    )
    assert "Decision support" in (bundle_dir / "MODEL_CARD.md").read_text()


def test_predict_leaves_the_study_folder_untouched_and_writes_every_output(predicted) -> None:
    site, out, runs, before = predicted
    assert tree_hash(site) == before
    assert len(runs) == 3
    for run in runs:
        assert run.prediction.tumour_found
        assert set(run.prediction.outputs) == {"t1", "t2", "t1ce", "t1+t2"}
        for name in (
            "seg.dcm",
            "rtstruct.dcm",
            "report.html",
            "report.png",
            "result.json",
        ):
            assert (run.folder / name).is_file(), name
        rec = run.prediction.recommended
        cams = [p.name for p in run.folder.glob("gradcam_*.png")]
        assert rec and cams == [f"gradcam_{rec.replace('+', '_')}.png"]
        assert run.prediction.outputs[rec].overlay is not None
        html = (run.folder / "report.html").read_text()
        assert "not a diagnosis" in html and "validated AUC" in html
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and summary[0].startswith("patient,tumour_found")


def test_a_classifier_whose_roi_has_no_reference_tissue_is_reported_not_run(bundle_dir, cohort, tmp_path) -> None:
    """A segmenter that marks the whole volume leaves no tissue around the tumour to reference the intensities to
    (``roi-intensity = "reference"``): each classifier is reported as not run with that reason, the patient's other
    outputs are still written, and nothing claims a probability."""
    from dataclasses import replace

    bundle = load_bundle(bundle_dir)
    with torch.no_grad():  # a real U-Net whose head is saturated: every voxel is tumour
        head = bundle.segmenter.segmentation_head[0]
        head.weight.zero_()
        head.bias.fill_(20.0)
    bundle = replace(bundle, cfg=replace(bundle.cfg, roi_intensity="reference"))
    runs = predict_study(bundle, cohort / "hospital-b", tmp_path / "predict", CPU)
    assert runs
    for run in runs:
        p = run.prediction
        assert p.tumour_found and p.outputs == {}
        assert set(p.not_run) == {"t1", "t2", "t1ce", "t1+t2"}
        assert all("no tissue around the predicted tumour" in r for r in p.not_run.values()), p.not_run
        assert "T1WI+T2WI" in p.not_run["t1+t2"]
        for name in ("seg.dcm", "rtstruct.dcm", "report.html", "result.json"):
            assert (run.folder / name).is_file(), name
        result = json.loads((run.folder / "result.json").read_text())
        assert "no tissue around the predicted tumour" in json.dumps(result)


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_contours_read_back_by_our_ingestion_equal_the_predicted_mask(predicted, kind, tmp_path) -> None:
    site, _, runs, _ = predicted
    for run in runs:
        copy = without_masks(site, tmp_path / run.pseudonym)
        shutil.copy(run.folder / f"{kind}.dcm", copy / f"predicted-{kind}.dcm")
        patient = next(p for p in load_site(copy).patients if p.pseudonym == run.pseudonym)
        assert patient.mask is not None
        assert patient.mask.shape == run.prediction.mask.shape
        assert np.array_equal(patient.mask, run.prediction.mask), (
            f"{kind}: {int((patient.mask != run.prediction.mask).sum())} voxels differ"
        )


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_seg_and_rtstruct_pass_dciodvfy(predicted) -> None:
    _, _, runs, _ = predicted
    for name in ("seg.dcm", "rtstruct.dcm"):
        path = runs[0].folder / name
        result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        lines = (result.stdout + result.stderr).splitlines()
        assert not [ln for ln in lines if ln.startswith("Error")], lines
    seg = pydicom.dcmread(runs[0].folder / "seg.dcm")
    rt = pydicom.dcmread(runs[0].folder / "rtstruct.dcm")
    source_series = (
        rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    )
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series.SeriesInstanceUID


def test_report_png_renders_and_is_not_blank(predicted) -> None:
    import matplotlib.image as mpimg

    _, _, runs, _ = predicted
    img = mpimg.imread(runs[0].folder / "report.png")[..., :3]
    assert img.shape[0] > 800 and img.shape[1] > 600
    ink = (img.mean(axis=-1) < 0.5).mean()
    assert ink > 0.01, f"only {ink:.4f} of the page is dark: blank report?"


def test_predict_with_one_sequence_removed_runs_the_models_that_can(bundle_dir, cohort, tmp_path) -> None:
    truth = json.loads((cohort / "_truth" / "cohort.json").read_text())["patients"]
    patient = next(p for p in truth if p["site"] == "hospital-b")
    site = shutil.copytree(cohort / "hospital-b", tmp_path / "site")
    t1_series = patient["series_uids"]["t1"]
    removed = 0
    for rel, entry in index_tree(site).items():
        if any(h.series_uid == t1_series for h in entry.headers):
            (site / rel).unlink()
            removed += 1
    assert removed
    runs = predict_study(load_bundle(bundle_dir), site, tmp_path / "out", CPU)
    run = next(r for r in runs if r.pseudonym == pseudonym(patient["patient_id"]))
    assert set(run.prediction.outputs) == {"t2", "t1ce"}
    assert set(run.prediction.not_run) == {"t1", "t1+t2"}
    assert "t1 missing" in run.prediction.not_run["t1+t2"]
    assert "T1WI+T2WI" in (run.folder / "report.html").read_text()


def rehash(bundle: Path) -> None:
    """Re-write the manifest as if the bundle had been written this way (a consistent but different bundle)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    settings = json.loads((bundle / "settings.json").read_text())
    write_manifest(bundle, settings_fingerprint(settings), manifest["code_version"], manifest["created"])


def test_segmenter_that_finds_nothing_gives_no_classifier_output(bundle_dir, predicted, tmp_path) -> None:
    site = predicted[0]
    empty = shutil.copytree(bundle_dir, tmp_path / "bundle")
    state = torch.load(empty / "segmenter.pt", weights_only=True)
    state["segmentation_head.0.bias"] = torch.full_like(state["segmentation_head.0.bias"], -1e4)
    torch.save(state, empty / "segmenter.pt")
    rehash(empty)
    runs = predict_study(load_bundle(empty), site, tmp_path / "out", CPU)
    for run in runs:
        assert not run.prediction.tumour_found and run.prediction.outputs == {}
        assert all(v == "no tumour found by the segmenter" for v in run.prediction.not_run.values())
        assert not (run.folder / "seg.dcm").exists() and not (run.folder / "rtstruct.dcm").exists()
        assert "No tumour found" in (run.folder / "report.html").read_text()
        assert json.loads((run.folder / "result.json").read_text())["models"] == {}


def test_a_changed_file_is_refused_naming_it(bundle_dir, predicted, tmp_path, capsys) -> None:
    changed = shutil.copytree(bundle_dir, tmp_path / "bundle")
    with open(changed / "classifier_t2.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"changed since it was written.*classifier_t2\.pt"):
        load_bundle(changed)
    rc = site_main(
        ["predict", str(changed), str(predicted[0]), "--out", str(tmp_path / "out"), "--device", "cpu"]
    )
    assert rc == 1 and "classifier_t2.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_incompatible_settings_or_format_are_refused(bundle_dir, tmp_path) -> None:
    def edited(name: str, edit) -> Path:
        b = shutil.copytree(bundle_dir, tmp_path / name)
        settings = json.loads((b / "settings.json").read_text())
        edit(settings)
        (b / "settings.json").write_text(json.dumps(settings))
        rehash(b)
        return b

    other_encoder = edited("encoder", lambda s: s["pipeline"].update({"seg-encoder": "resnet34"}))
    with pytest.raises(
        ModelMismatchError, match=r"segmenter\.pt does not fit the U-Net segmenter \(resnet34"
    ):
        load_bundle(other_encoder)
    older_ingest = edited("ingest", lambda s: s["ingest"].update({"version": 1}))
    with pytest.raises(BundleError, match="ingestion version 1"):
        load_bundle(older_ingest)
    unknown_key = edited("key", lambda s: s["pipeline"].update({"seg-dropout": 0.1}))
    with pytest.raises(BundleError, match="seg-dropout"):
        load_bundle(unknown_key)
    newer = shutil.copytree(bundle_dir, tmp_path / "newer")
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(newer)


def test_a_state_dict_never_loads_into_the_wrong_architecture(tmp_path) -> None:
    from dataclasses import replace

    from shared.config import PipelineConfig
    from shared.models import build_classifier

    path = tmp_path / "r18.pt"
    torch.save(
        build_classifier(replace(PipelineConfig.defaults().cls, arch="resnet18"), 2).state_dict(), path
    )
    with pytest.raises(ModelMismatchError, match="r18.pt does not fit"):
        load_state_strict(
            build_classifier(replace(PipelineConfig.defaults().cls, arch="resnet50"), 2), path, "resnet50"
        )
    with pytest.raises(ModelMismatchError, match=r"shape mismatch.*conv1\.weight"):
        load_state_strict(
            build_classifier(replace(PipelineConfig.defaults().cls, arch="resnet18"), 1),
            path,
            "resnet18, 1 channel",
        )


def test_the_exact_scorer_reproduces_the_study_that_wrote_the_bundle(bundle_dir: Path) -> None:
    """`compare` scores the federated bundle exactly; on the centralized bundle, whose run scored its own test
    patients exactly, the same scorer must give that run's AUC for every dataset (same masks, crops, scores)."""
    from simulations.score_models import score_study_bundle

    results = json.loads((bundle_dir.parent / "results.json").read_text())
    assert results["auc"], "the toy study scored no dataset: nothing to reproduce"
    scored = score_study_bundle(bundle_dir, make_toy_cohort(20, size=32, depth=6), CPU)
    assert set(scored["auc"]) == set(results["auc"])
    for dataset, entry in results["auc"].items():
        assert scored["auc"][dataset]["source"] == "exact"
        assert scored["auc"][dataset]["n_patients"] == entry["n_patients"]
        assert scored["auc"][dataset]["value"] == pytest.approx(entry["value"], abs=1e-9)
        # the Youden threshold is one patient's score: equal only when the raw scores are
        assert scored["auc"][dataset]["threshold"] == pytest.approx(entry["threshold"], abs=1e-9)
    # other patients' scores differ: the scorer reads the patients it is given
    other = score_study_bundle(bundle_dir, make_toy_cohort(20, size=32, depth=6, seed=5), CPU)
    assert any(other["auc"][d]["threshold"] != scored["auc"][d]["threshold"] for d in other["auc"])


def test_exact_scores_are_refused_when_no_single_model_holds_the_sites_scores() -> None:
    from simulations.score_models import exact_scores_refusal

    assert exact_scores_refusal(fedbn=False, study_state="COMPLETED") is None
    assert "ended FAILED" in exact_scores_refusal(fedbn=False, study_state="FAILED")
    assert "fedbn = true" in exact_scores_refusal(fedbn=True, study_state="COMPLETED")


def test_a_bundle_written_before_the_newer_keys_loads_as_it_behaved_and_other_gaps_are_refused(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """A bundle whose settings predate cls-tta and seg-augment is read with the values it was written under
    (one score per slice); a bundle missing any other key is still refused, naming it."""
    old = shutil.copytree(bundle_dir, tmp_path / "old")
    settings = json.loads((old / "settings.json").read_text())
    settings["pipeline"].pop("cls-tta")
    settings["pipeline"].pop("seg-augment")
    settings["pipeline"].pop("seg-norm")
    settings["pipeline"].pop("cls-crop-means")
    settings["pipeline"].pop("seg-weight-ema")
    (old / "settings.json").write_text(json.dumps(settings))
    rehash(old)
    loaded = load_bundle(old)
    assert loaded.cfg.cls.tta == "none" and loaded.cfg.seg.augment == "none"
    assert loaded.cfg.seg.norm == "batch"  # its segmenter's BatchNorm state loaded strictly
    assert loaded.cfg.cls.crop_means is False  # and its classifiers' plain heads
    assert loaded.cfg.seg.weight_ema == 0.0  # training only: its kept segmenter is a plain U-Net either way
    settings["pipeline"].pop("roi-margin")
    (old / "settings.json").write_text(json.dumps(settings))
    rehash(old)
    with pytest.raises(BundleError, match="pipeline settings lack roi-margin"):
        load_bundle(old)
