"""Ingestion on hand-made DICOM written with pydicom into tmp_path: geometry, resampling, masks, bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, generate_uid

from shared.data.dicom.geometry import VolumeGeometry, check_geometry
from shared.data.dicom.index import index_tree
from shared.data.dicom.resample import resample
from shared.data.dicom.rtstruct import Contour, Roi, rasterise, select_roi
from shared.data.dicom.volumes import load_series
from shared.data.settings import DEFAULT_ROI_PATTERNS
from shared.data.site import load_site
from shared.errors import DicomError
from tests.ingest_factory import (
    linear_field,
    square,
    write_labels,
    write_patient,
    write_rtstruct,
    write_series,
)


def headers_of(folder):
    return [h for e in index_tree(folder).values() for h in e.headers]


def test_shuffled_series_without_slice_location_sorted_by_position(tmp_path):
    files = write_series(tmp_path / "s", "P1", generate_uid(), n_slices=6, shuffle_seed=3)
    assert all("SliceLocation" not in ds for _, ds in files)
    numbers = [ds.InstanceNumber for _, ds in files]
    assert numbers != sorted(numbers)  # really shuffled
    loaded, problems = load_series(tmp_path / "s", headers_of(tmp_path / "s"), "p-x", 1.5, 3)
    assert problems == []
    assert loaded.volume.shape == (6, 24, 20)
    expected = linear_field(loaded.geometry.world())
    np.testing.assert_allclose(loaded.volume, expected, atol=0.51)  # stored values are rounded
    assert loaded.geometry.positions == tuple(-10.0 + 4.0 * k for k in range(6))
    # affine (k, j, i, 1) -> LPS agrees with the per-voxel world coordinates and inverts with to_index
    k, j, i = 4, 7, 3
    world = loaded.geometry.world()[k, j, i]
    np.testing.assert_allclose(loaded.geometry.affine() @ [k, j, i, 1], [*world, 1.0])
    np.testing.assert_allclose(world, [-12.0 + 3 * 1.25, -15.0 + 7 * 1.5, -10.0 + 4 * 4.0])
    np.testing.assert_allclose(loaded.geometry.to_index(world), [k, j, i], atol=1e-9)


def test_oblique_series_resampled_onto_reference_grid(tmp_path):
    study = generate_uid()
    ref_files = write_series(tmp_path / "ref", "P1", study, n_slices=10, rows=32, cols=32, spacing=(1.0, 1.0), step=3.0,
                             origin=(-16.0, -16.0, -14.0))  # fmt: skip
    a, b = np.deg2rad(20.0), np.deg2rad(10.0)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
    write_series(tmp_path / "obl", "P1", study, n_slices=24, rows=48, cols=48, spacing=(1.1, 0.9), step=1.5,
                 iop=(*row, *col), origin=(-24.0, -22.0, -22.0), series_number=2)  # fmt: skip
    ref, _ = load_series(tmp_path / "ref", headers_of(tmp_path / "ref"), "p", 1.5, 3)
    obl, _ = load_series(tmp_path / "obl", headers_of(tmp_path / "obl"), "p", 1.5, 3)
    assert len(ref_files) == 10
    out = resample(obl.volume, obl.geometry, ref.geometry)
    assert out.shape == ref.volume.shape
    world = ref.geometry.world()
    idx = obl.geometry.to_index(world)
    inside = np.all((idx >= 1) & (idx <= np.asarray(obl.volume.shape) - 2), axis=-1)
    assert inside.sum() > 2000
    err = np.abs(out - linear_field(world))[inside]
    assert err.max() < 1.0  # linear field: trilinear interpolation is exact up to storage rounding
    assert np.all(out[~np.all((idx >= -0.5) & (idx <= np.asarray(obl.volume.shape) - 0.5), axis=-1)] == 0)


def test_even_odd_fill_islands_and_hole():
    geom = VolumeGeometry((0.0, 0.0, 0.0), (1, 0, 0), (0, 1, 0), (1.0, 1.0), (0.0, 2.0, 4.0), 20, 20)
    outer = square(9.5, 9.5, 6.0, 2.0)  # pixels 4..15
    hole = square(9.5, 9.5, 2.0, 2.0)  # pixels 8..11
    island = square(1.5, 1.5, 1.0, 2.0)  # pixels 1..2
    contours = [Contour("CLOSED_PLANAR", p) for p in (outer, hole, island)]
    mask, problems = rasterise(contours, geom)
    assert problems == []
    expected = np.zeros((3, 20, 20), np.uint8)
    expected[1, 4:16, 4:16] = 1
    expected[1, 8:12, 8:12] = 0
    expected[1, 1:3, 1:3] = 1
    np.testing.assert_array_equal(mask, expected)


def test_roi_name_patterns_primary_not_nodes():
    def roi(name):
        return Roi(1, name, "GTV", [Contour("CLOSED_PLANAR", square(0, 0, 1, 0))])

    for name in ("GTVnx", "GTV-NX", "GTVp", "GTV_nx_MR", "GTV_P", "gtvnx", " GTVp_7000", "GTVnx MR"):
        assert select_roi([roi(name)], DEFAULT_ROI_PATTERNS)[0] is not None, name
    for name in ("GTVnd", "GTVn", "GTVrpn", "GTVln", "GTVnd_L", "CTVnx", "PTV"):
        assert select_roi([roi(name)], DEFAULT_ROI_PATTERNS)[0] is None, name


def test_rtstruct_on_site_with_and_without_contour_image_sequence(tmp_path):
    site = tmp_path / "site"
    p = write_patient(site, "P1", diagnosis_mask=False)
    t1ce = sorted(p["t1ce"], key=lambda f: f[1].ImagePositionPatient[2])
    z = [float(ds.ImagePositionPatient[2]) for _, ds in t1ce]
    ref_k2 = t1ce[2][1].SOPInstanceUID
    contours = [
        (square(0.0, 0.0, 6.0, z[2]), ref_k2),  # outer, referenced
        (square(0.0, 0.0, 2.0, z[2]), None),  # hole, matched by position
        (square(-8.0, -8.0, 1.5, z[2]), None),  # island
        (square(0.0, 0.0, 4.0, z[4] + 1.0), None),  # 1 mm off the plane: still matched (< 2 mm)
        (square(0.0, 0.0, 4.0, z[-1] + 40.0), None),  # beyond the volume: matches no slice
    ]
    write_rtstruct(site / "P1" / "rs.dcm", "P1", p["study"],
                   [("GTVnd", "GTV", [(square(5, 5, 2, z[3]), None)]), ("GTV_nx_MR", "GTV", contours)])  # fmt: skip
    write_labels(site, [("P1", "NPC")])
    cohort = load_site(site)
    (pv,) = cohort.patients
    assert pv.mask is not None and pv.mask.shape == pv.images["t2"].shape
    geom, _ = load_series(site / "P1" / "t1c", headers_of(site / "P1" / "t1c"), "p", 1.5, 3)
    expected, _ = rasterise([Contour("CLOSED_PLANAR", c) for c, _ in contours[:4]], geom.geometry)
    np.testing.assert_array_equal(pv.mask, expected)  # same grid here: t1ce and t2 share geometry
    # outer 10 x 8 px - hole 4 x 3 px + island 3 x 2 px (pixel 1.25 x 1.5 mm, origin (-12, -15))
    assert expected[2].sum() == 80 - 12 + 6 and expected[4].sum() > 0
    problems = [q for q in cohort.report.problems if q.code == "contour_no_slice"]
    assert len(problems) == 1 and "matches no slice" in problems[0].message
    assert cohort.report.patients[0].mask == "rtstruct:GTV_nx_MR"


def test_duplicates_gap_missing_position_and_bad_files_are_reported_not_fatal(tmp_path):
    site = tmp_path / "site"
    write_patient(site, "P1", folder="a")
    write_patient(site, "P2", folder="b")
    files = write_series(site / "c" / "t2", "P3", generate_uid(), tr=4000, te=100,
                         positions=[0.0, 4.0, 8.0, 16.0, 20.0, 24.0, 28.0])  # fmt: skip
    shutil.copy(files[1][0], site / "c" / "t2" / "copy_of_slice.dcm")  # duplicate slice (same SOP)
    ds = files[4][1]
    del ds.ImagePositionPatient
    ds.save_as(files[4][0], enforce_file_format=True)
    (site / "c" / "README_scan.txt").write_text("exported by PACS\n")
    data = files[5][0].read_bytes()
    files[5][0].write_bytes(data[: len(data) - 100])  # truncated pixel data
    (site / "c" / "header_cut.dcm").write_bytes(data[:200])  # truncated inside the header
    write_labels(site, [("P1", "NPC"), ("P2", "NPL"), ("P3", "NPC")])
    cohort = load_site(site)
    by_code: dict[str, list] = {}
    for p in cohort.report.problems:
        by_code.setdefault(p.code, []).append(p)
    assert by_code["duplicate_slice"][0].file in (
        "c/t2/copy_of_slice.dcm",
        files[1][0].relative_to(site).as_posix(),
    )
    assert by_code["missing_geometry"][0].file == files[4][0].relative_to(site).as_posix()
    assert "ImagePositionPatient" in by_code["missing_geometry"][0].message
    assert by_code["bad_pixels"][0].file == files[5][0].relative_to(site).as_posix()
    assert "truncated pixel data" in by_code["bad_pixels"][0].message
    assert any("gap of" in p.message for p in by_code["slice_gap"])
    assert {p.file for p in by_code["not_dicom"]} == {"c/README_scan.txt"}
    assert {p.file for p in by_code["unreadable"]} == {"c/header_cut.dcm"}
    assert len(cohort.patients) == 3  # nothing stopped ingestion
    p3 = next(p for p in cohort.patients if "t1" not in p.images)
    # 0, 4, 8, [12 missing], 16, [20 missing IPP], [24 truncated], 28 -> regular 4 mm grid, gaps interpolated
    assert p3.images["t2"].shape[0] == 8 and p3.spacing_mm[0] == pytest.approx(4.0)
    assert not cohort.report.blocking


def test_unknown_transfer_syntax_rejects_series_naming_file_and_syntax(tmp_path):
    site = tmp_path / "site"
    write_patient(site, "P1", folder="a")
    p2 = write_patient(site, "P2", folder="b")
    for path, _ in p2["t1"]:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([ds.PixelData])
        ds.save_as(path)
    write_labels(site, [("P1", "NPC"), ("P2", "NPL")])
    cohort = load_site(site)
    (p,) = [p for p in cohort.report.problems if p.code == "unsupported_transfer_syntax"]
    assert p.file.startswith("b/t1/")
    assert "MPEG2 Main Profile / Main Level" in p.message and MPEG2MPML in p.message
    patient2 = next(v for v in cohort.patients if "t1" not in v.images)
    assert set(patient2.images) == {"t2", "t1ce"}


def test_geometry_without_any_position_is_a_clear_error(tmp_path):
    files = write_series(tmp_path / "s", "P1", generate_uid(), n_slices=3)
    for path, ds in files:
        del ds.ImagePositionPatient
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError, match="ImagePositionPatient"):
        check_geometry(headers_of(tmp_path / "s"))
