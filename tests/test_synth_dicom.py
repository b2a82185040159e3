"""The synthetic cohort's DICOM: valid files (dciodvfy), header dialects per site, pixel values and contours that
round-trip to the generator's truth."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as PolyPath

from simulations.synth.cohort import CohortConfig, generate_cohort
from simulations.synth.site_profile import GridPreset

TINY_GRID = GridPreset(
    matrix=48, pixel_mm=(4.0, 4.2), n_slices=(9, 9), thickness_mm=(5.0,), gap_mm=(0.0, 1.0)
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    config = CohortConfig(
        sites=3, patients_per_site=(6, 6, 6), seed=3, grid=TINY_GRID, min_contoured_per_site=3
    )
    generate_cohort(out, config, progress=False)
    return out


def read_site(site_dir: Path) -> list[tuple[Path, pydicom.Dataset]]:
    out = []
    for path in sorted(site_dir.rglob("*")):
        if path.is_file() and path.name not in ("labels.csv", "site_mapping.json"):
            out.append((path, pydicom.dcmread(path)))
    return out


def series_by_uid(site_dir: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    groups: dict[str, list] = defaultdict(list)
    for path, ds in read_site(site_dir):
        groups[ds.SeriesInstanceUID].append((path, ds))
    return groups


def test_site_folders_labels_and_mapping(cohort: Path) -> None:
    sites = sorted(p.name for p in cohort.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert sites == ["hospital-a", "hospital-b", "hospital-c"]
    meta = json.loads((cohort / "_truth" / "cohort.json").read_text())
    for site in sites:
        with open(cohort / site / "labels.csv") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["patient_id", "diagnosis"]
        assert {r[1] for r in rows[1:]} <= {"NPC", "NPL"} and len(rows) == 7
        truth = {p["patient_id"]: p for p in meta["patients"] if p["site"] == site}
        for pid, diagnosis in rows[1:]:
            assert truth[pid]["diagnosis"] == diagnosis
            assert len(pid) == 7 and pid[:2] == "H" + site[-1].upper() and pid[2:].isdigit()
            assert (cohort / "_truth" / site / f"{pid}.npz").is_file()
    mapping = json.loads((cohort / "hospital-c" / "site_mapping.json").read_text())
    assert set(mapping) == {"series", "roi_names"}
    assert set(mapping["series"].values()) == {"t1", "t2", "t1ce", "ignore"}


def test_dialects_differ_across_sites(cohort: Path) -> None:
    syntaxes, layouts, descriptions = {}, {}, {}
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        files = read_site(cohort / site)
        syntaxes[site] = {
            ds.file_meta.TransferSyntaxUID.name for _, ds in files if ds.Modality == "MR" and ds.Rows >= 32
        }
        layouts[site] = files[0][0].relative_to(cohort / site).parts[0]
        descriptions[site] = {ds.get("SeriesDescription") for _, ds in files if ds.Modality == "MR"}
    assert syntaxes["hospital-a"] == {"Explicit VR Little Endian"}
    assert syntaxes["hospital-b"] == {"Implicit VR Little Endian"}
    assert syntaxes["hospital-c"] == {"JPEG 2000 Image Compression (Lossless Only)"}
    assert layouts["hospital-a"] == "export" and layouts["hospital-b"] == "DICOM"
    assert not descriptions["hospital-a"] & descriptions["hospital-c"]


def test_distractors_and_header_cues(cohort: Path) -> None:
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        kinds = defaultdict(set)
        for series in series_by_uid(cohort / site).values():
            ds = series[0][1]
            if ds.Modality != "MR":
                continue
            image_type = list(ds.ImageType)
            if "LOCALIZER" in image_type:
                kinds["loc"].add(len({tuple(d.ImageOrientationPatient) for _, d in series}))
            elif "DIFFUSION" in image_type:
                assert ds.ScanningSequence == "EP"
                kinds["dwi"].add(1)
            elif ds.RepetitionTime > 2000:
                kinds["t2"].add(float(ds.EchoTime) > 60)
            else:
                kinds["t1" + ("ce" if int(ds.SeriesNumber) == 7 else "")].add(float(ds.EchoTime) < 30)
        assert kinds["loc"] == {3}, "a 3-plane localiser in every study"
        assert kinds["t1"] == {True} and kinds["t2"] == {True} and kinds["t1ce"] == {True}
        assert ("dwi" in kinds) == (site != "hospital-b")


def test_pixels_and_geometry_match_truth(cohort: Path) -> None:
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        for uid, series in series_by_uid(cohort / site).items():
            ds0 = series[0][1]
            if ds0.Modality != "MR" or "LOCALIZER" in ds0.ImageType or "DIFFUSION" in ds0.ImageType:
                continue
            truth = np.load(cohort / "_truth" / site / f"{ds0.PatientID}.npz")
            seq = next(s for s in truth["sequences"] if truth[f"{s}_series_uid"].item() == uid)
            iop = np.array(ds0.ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            ordered = sorted((float(normal @ np.array(d.ImagePositionPatient, float)), d) for _, d in series)
            volume = np.stack([pydicom.pixels.apply_rescale(d.pixel_array, d) for _, d in ordered]).astype(
                np.float32
            )
            np.testing.assert_array_equal(volume, truth[f"{seq}_image"])
            np.testing.assert_allclose(
                np.array(ordered[0][1].ImagePositionPatient, float), truth[f"{seq}_ipp0"], atol=1e-4
            )
            np.testing.assert_allclose(iop, truth[f"{seq}_iop"], atol=1e-6)
            numbers = [int(d.InstanceNumber) for _, d in ordered]
            assert numbers == (sorted(numbers, reverse=True) if site == "hospital-a" else sorted(numbers))
            assert ("SliceLocation" in ds0) == (site != "hospital-b")
            if site == "hospital-c":
                assert float(ds0.RescaleSlope) > 1.0


def _rasterise(ds: pydicom.Dataset, roi_number: int, ref: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """Even-odd fill of one ROI's contours onto the referenced series grid (matched by position)."""
    iop, ipp0, spacing = ref["iop"], ref["ipp0"], ref["spacing"]
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    mask = np.zeros(shape, dtype=bool)
    jj, ii = np.mgrid[: shape[1], : shape[2]]
    centres = np.c_[ii.ravel(), jj.ravel()]
    for rc in ds.ROIContourSequence:
        if rc.ReferencedROINumber != roi_number:
            continue
        for item in rc.ContourSequence:
            pts = np.array(item.ContourData, float).reshape(-1, 3) - ipp0
            k = int(round(float(np.mean(pts @ normal)) / spacing[0]))
            uv = np.c_[pts @ row / spacing[2], pts @ col / spacing[1]]
            inside = PolyPath(uv).contains_points(centres).reshape(shape[1:])
            mask[k] ^= inside
    return mask


def test_rtstruct_contours_round_trip(cohort: Path) -> None:
    checked = 0
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        for _, ds in read_site(cohort / site):
            if ds.Modality != "RTSTRUCT":
                continue
            truth = np.load(cohort / "_truth" / site / f"{ds.PatientID}.npz")
            names = [r.ROIName for r in ds.StructureSetROISequence]
            assert names[0] == truth["mask_roi_name"].item() and set(names[1:]) <= {"GTVnd"}
            has_refs = "ContourImageSequence" in ds.ROIContourSequence[0].ContourSequence[0]
            assert has_refs == (site != "hospital-b")
            seq = truth["mask_sequence"].item()
            ref = {
                "iop": truth[f"{seq}_iop"],
                "ipp0": truth[f"{seq}_ipp0"],
                "spacing": truth[f"{seq}_spacing"],
            }
            mask = truth["mask"].astype(bool)
            got = _rasterise(ds, 1, ref, mask.shape)
            dice = 2 * (got & mask).sum() / max(got.sum() + mask.sum(), 1)
            assert dice > 0.95, f"{site}: contour Dice {dice:.3f}"
            checked += 1
    assert checked >= 9


DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_reports_no_errors(cohort: Path) -> None:
    picked: dict[str, Path] = {}
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        for path, ds in read_site(cohort / site):
            kind = ds.Modality if ds.Modality != "MR" else str(ds.ImageType[2])
            picked.setdefault(f"{site}:{kind}", path)
    assert len(picked) >= 11  # MR (M), LOCALIZER, DIFFUSION, RTSTRUCT at each site (no DWI at hospital-b)
    for key, path in picked.items():
        result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{key}: {errors}"
