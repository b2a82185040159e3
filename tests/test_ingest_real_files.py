"""Ingestion on real DICOM files shipped in pydicom's wheel (nobody in the project wrote them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from shared.data.dicom.classify import classify_series
from shared.data.dicom.geometry import VolumeGeometry
from shared.data.dicom.index import index_tree, read_header
from shared.data.dicom.pixels import read_slice
from shared.data.dicom.rtstruct import parse_rtstruct, rasterise, select_roi
from shared.data.dicom.seg import parse_seg, segment_mask, select_segment
from shared.data.dicom.series import group_series, non_volume_reason
from shared.data.settings import IngestSettings
from shared.data.site import load_site
from shared.errors import DicomError

SETTINGS = IngestSettings()
TEST_FILES = Path(get_testdata_file("MR_small.dcm")).parent
ENCODINGS = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_padded.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


def header(name: str):
    entry = read_header(TEST_FILES / name, name, 0, 0)
    assert not entry.problems, entry.problems
    return entry.headers


def test_mr_small_is_t2_by_tr_te_without_description():
    (h,) = header("MR_small.dcm")
    assert h.series_description == "" and h.protocol_name == ""
    assert h.contrast_agent == ""  # present but empty
    (group,) = group_series([h])
    c = classify_series(group, SETTINGS)
    assert c.sequence == "t2"
    assert c.excluded == ""
    assert "TR 4000 / TE 240" in c.reason and "T2 rule" in c.reason
    assert c.derived and not c.post_contrast  # DERIVED\SECONDARY\OTHER: usable, ranked after ORIGINAL


@pytest.mark.parametrize("name", ENCODINGS)
def test_mr_small_encodings_decode_to_the_same_pixels(name):
    (ref,) = header("MR_small.dcm")
    (h,) = header(name)
    expected = read_slice(TEST_FILES, ref)
    got = read_slice(TEST_FILES, h)
    assert got.dtype == np.float32 and got.shape == (64, 64)
    np.testing.assert_array_equal(got, expected)
    raw = pydicom.dcmread(TEST_FILES / "MR_small.dcm").pixel_array
    np.testing.assert_array_equal(expected, raw.astype(np.float32))  # no rescale tags in MR_small


def test_mr_truncated_is_rejected_naming_the_file():
    (h,) = header("MR_truncated.dcm")
    with pytest.raises(DicomError) as err:
        read_slice(TEST_FILES, h)
    msg = str(err.value)
    assert msg.startswith("MR_truncated.dcm:")
    assert "truncated pixel data" in msg and "8130 vs 8192" in msg
    assert "4MR1" not in msg  # PatientID of the file


def test_examples_overlay_is_excluded_as_mpr_but_contrast_is_seen():
    (h,) = header("examples_overlay.dcm")
    assert h.contrast_agent == "11 ml Omniscan"
    (group,) = group_series([h])
    c = classify_series(group, SETTINGS)
    assert "MPR" in c.excluded and not c.usable
    assert c.post_contrast
    assert c.sequence == "t1ce"  # GRE, TR 5.53 ms -> 3D T1, with agent -> post-contrast
    assert "GRE" in c.reason


def test_rtstruct_without_file_meta_external_roi_is_not_a_gtv():
    entry = read_header(TEST_FILES / "rtstruct.dcm", "rtstruct.dcm", 0, 0)
    (h,) = entry.headers
    assert h.modality == "RTSTRUCT" and h.transfer_syntax == "1.2.840.10008.1.2"  # no file meta: inferred
    ds = pydicom.dcmread(TEST_FILES / "rtstruct.dcm", force=True)
    ss = parse_rtstruct(ds)
    names = {r.name: r for r in ss.rois}
    assert names["patient"].interpreted_type == "EXTERNAL"
    assert len(names["patient"].closed_planar) == 3
    assert all(not c.referenced_sops for c in names["patient"].contours)  # no ContourImageSequence
    roi, note = select_roi(ss.rois, SETTINGS.roi_patterns)
    assert roi is None and "'patient' (EXTERNAL)" in note


def test_rtstruct_contours_rasterised_on_a_matching_grid():
    ds = pydicom.dcmread(TEST_FILES / "rtstruct.dcm", force=True)
    patient = next(r for r in parse_rtstruct(ds).rois if r.name == "patient")
    # contours: rectangle x in [-200, 200], y in [-150, 150] at z = -200, -190, -180 mm
    geom = VolumeGeometry(
        (-250.0, -250.0, -200.0), (1, 0, 0), (0, 1, 0), (10.0, 10.0), (-200.0, -190.0, -180.0, -170.0), 50, 50
    )
    mask, problems = rasterise(patient.closed_planar, geom)
    assert problems == []
    expected = np.zeros((4, 50, 50), dtype=np.uint8)
    expected[:3, 10:40, 5:45] = 1  # pixel centres inside the half-open rectangle
    np.testing.assert_array_equal(mask, expected)
    # shifted grid: z planes 4 mm off (< half spacing 5 mm) still match; 6 mm off do not
    near = VolumeGeometry(
        (-250.0, -250.0, -196.0), (1, 0, 0), (0, 1, 0), (10.0, 10.0), (-196.0, -186.0, -176.0), 50, 50
    )
    assert rasterise(patient.closed_planar, near)[0].sum() == 3 * 1200
    far = VolumeGeometry(
        (-250.0, -250.0, -100.0), (1, 0, 0), (0, 1, 0), (10.0, 10.0), (-100.0, -90.0, -80.0), 50, 50
    )
    mask, problems = rasterise(patient.closed_planar, far)
    assert mask.sum() == 0 and len(problems) == 3 and all("matches no slice" in p for p in problems)


def test_liver_seg_read_with_pydicom():
    ds = pydicom.dcmread(TEST_FILES / "liver_1frame.dcm")
    seg = parse_seg(ds, "liver_1frame.dcm")
    assert seg.segment_labels == {1: "Liver"}
    assert len(seg.frames) == 1
    f = seg.frames[0]
    assert f.mask.shape == (512, 512) and int(f.mask.sum()) == 36233
    assert select_segment(seg, SETTINGS.roi_patterns)[0] is None  # "Liver" is no GTV
    number, _ = select_segment(seg, ("^liver$",))
    assert number == 1
    d = float(np.cross(f.iop[:3], f.iop[3:]) @ np.asarray(f.ipp))
    own = VolumeGeometry(tuple(f.ipp), tuple(f.iop[:3]), tuple(f.iop[3:]), tuple(f.spacing), (d,), 512, 512)
    np.testing.assert_array_equal(segment_mask(seg, 1, own)[0], f.mask.astype(np.uint8))


def test_mr2_three_orientations_split_and_localiser_rejected():
    entries = index_tree(TEST_FILES / "dicomdirtests" / "98892003" / "MR2")
    headers = [h for e in entries.values() for h in e.headers]
    assert len(headers) == 7
    groups = group_series(headers)
    by_series: dict[str, list] = {}
    for g in groups:
        by_series.setdefault(g.series_uid, []).append(g)
    pilots = [
        parts for parts in by_series.values() if parts[0].first.series_description == "T/S/C RF FAST PILOT"
    ]
    assert len(pilots) == 2
    for parts in pilots:
        assert len(parts) == 3 and "3 orientations" in parts[0].split_reason
        for g in parts:
            assert "3-plane localiser" in non_volume_reason(g, parts, SETTINGS.min_slices)
            assert "localiser" in classify_series(g, SETTINGS).excluded


def test_mr700_rotating_orientation_is_not_a_volume():
    entries = index_tree(TEST_FILES / "dicomdirtests" / "98892003" / "MR700")
    groups = group_series([h for e in entries.values() for h in e.headers])
    assert len(groups) == 7 and all(g.n_slices == 1 for g in groups)
    for g in groups:
        assert "orientation changes from slice to slice" in non_volume_reason(g, groups, SETTINGS.min_slices)
        assert "projection image" in classify_series(g, SETTINGS).excluded


def test_site_of_real_files_reports_every_problem_without_stopping(tmp_path):
    site = tmp_path / "real"
    shutil.copytree(TEST_FILES / "dicomdirtests" / "98892003", site / "dicom")
    for name in (
        "MR_small.dcm",
        "MR_truncated.dcm",
        "examples_overlay.dcm",
        "rtstruct.dcm",
        "liver_1frame.dcm",
    ):
        shutil.copy(TEST_FILES / name, site / name)
    (site / "notes.txt").write_text("not dicom")
    (site / "labels.csv").write_text("patient_id,diagnosis\n98890234,NPC\n")
    cohort = load_site(site)
    codes = {(p.code, p.file) for p in cohort.report.problems}
    assert ("not_dicom", "notes.txt") in codes
    excluded = [p.message for p in cohort.report.problems if p.code == "series_excluded"]
    assert any("3-plane localiser" in m or "localiser" in m for m in excluded)
    assert any("projection image" in m for m in excluded)
    assert any("MPR" in m for m in excluded)
    # MR_small + MR_truncated: same SOP instance, one series of 2 slices: T2 by TR/TE, but not a volume
    assert any(
        "MR_small.dcm" in p.file and "a volume needs at least 3" in p.message for p in cohort.report.problems
    )
    assert cohort.patients == []
    assert {p.code for p in cohort.report.blocking} == {"no_usable_patient"}


def copy_public_collection(site: Path) -> None:
    """pydicom's test files and the pydicom-data package (dev extra; its files ship in the wheel, no
    network): many vendors, encodings, DICOMDIRs, secondary captures, deliberately broken files."""
    from pydicom.data import get_testdata_files

    for name in get_testdata_files():
        src = Path(name)
        parts = src.parts
        top = max(i for i, part in enumerate(parts) if part in ("test_files", "data_store"))
        dst = site.joinpath(*parts[top:])
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)


#: Files of the collection that really are broken (named so by pydicom), and what must be said of them.
REALLY_BROKEN = {
    "rtplan_truncated.dcm": "truncated header",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "truncated pixel data",
}


def test_public_multi_vendor_collection_no_false_truncation_no_scrambled_path(tmp_path, capsys):
    import data_store  # noqa: F401  (pydicom-data, in the dev extra: pip install -e '.[dev]')

    from client.cli import main as site_cli

    site = tmp_path / "public"
    copy_public_collection(site)
    assert sum(1 for _ in site.rglob("*")) > 250
    (site / "labels.csv").write_text("patient_id,diagnosis\n4MR1,NPC\n")
    report = load_site(site).report
    for view in (report.problems, report.public_problems()):
        for p in view:
            if not p.file or p.file == "labels.csv":
                continue
            assert (site / p.file).exists(), f"reported path not on disk: {p.file}"
            if p.code in ("unreadable", "bad_pixels"):
                name = Path(p.file).name
                assert name in REALLY_BROKEN or name == "MR_truncated.dcm", (p.file, p.message)
                if name in REALLY_BROKEN:
                    assert REALLY_BROKEN[name] in p.message
    found = {Path(p.file).name for p in report.problems if p.code in ("unreadable", "bad_pixels")}
    assert set(REALLY_BROKEN) <= found
    assert any(p.code == "dicomdir" and p.severity == "info" for p in report.problems)
    assert "p-" not in "".join(p.file for p in report.public_problems())  # no path rewritten
    site_cli(["validate", str(site), "--no-progress"])
    printed = capsys.readouterr().out
    assert "file truncated?" not in printed and "test_files/" in printed
