"""Issue 10: no silent corruption in ingestion, and every problem actionable by the hospital.

Each test writes hand-made DICOM into tmp_path (tests/ingest_factory.py) and checks one class of
defect: bare datasets, edge slices blanked by resampling, invalid geometry values, re-sent slices,
constant volumes, the report scrubber, labels.csv rows, false truncation, symlinked exports, and the
smaller report defects.
"""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import generate_uid
from scipy.spatial.transform import Rotation

from shared.data.dicom.geometry import VolumeGeometry
from shared.data.dicom.resample import resample, resample_mask
from shared.data.site import load_site
from shared.pseudonym import pseudonym
from tests.ingest_factory import square, write_labels, write_patient, write_rtstruct, write_series


def rewrite_bare(path, implicit: bool) -> None:
    """Re-save a file as a bare dataset: no preamble, no file meta (old PACS, some anonymisers)."""
    ds = pydicom.dcmread(path)
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    ds.save_as(path, implicit_vr=implicit, little_endian=True)
    assert open(path, "rb").read(132)[128:] != b"DICM"


def by_code(report) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in report.problems:
        out.setdefault(p.code, []).append(p)
    return out


# 1 -------------------------------------------------------------------------------------------------
def test_bare_datasets_give_the_same_volume_and_mask_as_with_file_meta(tmp_path):
    site = tmp_path / "meta"
    write_patient(site, "P1")
    write_labels(site, [("P1", "NPC")])
    bare = tmp_path / "bare"
    shutil.copytree(site, bare)
    # the whole export without file meta, as an old PACS writes it: implicit and explicit VR mixed
    for k, path in enumerate(sorted((bare / "P1").rglob("*.dcm"))):
        rewrite_bare(path, implicit=k % 2 == 0)
    (want,), (got,) = load_site(site).patients, load_site(bare).patients
    assert got.images.keys() == want.images.keys() == {"t1", "t2", "t1ce"}
    for seq in want.images:
        np.testing.assert_array_equal(got.images[seq], want.images[seq])
    assert want.mask is not None and want.mask.sum() > 0
    np.testing.assert_array_equal(got.mask, want.mask)


# 2 -------------------------------------------------------------------------------------------------
def slab_grid(rng, corner, rot, fov, n_slices, thickness, matrix, decimals) -> VolumeGeometry:
    """A grid filling the box corner + [0, fov_x] row + [0, fov_y] col + [0, n*thk] normal, with
    IOP rounded to 6 and IPP to ``decimals`` decimals as scanners write them."""
    row, col = np.round(rot[:, 0], 6), np.round(rot[:, 1], 6)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    dc, dr = fov[0] / matrix[1], fov[1] / matrix[0]
    first = corner + 0.5 * dc * rot[:, 0] + 0.5 * dr * rot[:, 1] + 0.5 * thickness * rot[:, 2]
    ipps = [np.round(first + k * thickness * rot[:, 2], decimals) for k in range(n_slices)]
    return VolumeGeometry(tuple(ipps[0]), tuple(row), tuple(col), (dr, dc),
                          tuple(float(normal @ x) for x in ipps), matrix[0], matrix[1])  # fmt: skip


def edge_loss_share(n_cases: int, seed: int) -> float:
    """Share of random oblique T1/T2-like pairs (one slab, different matrices and slice counts, DICOM
    rounding) where an edge slice of the resampled image or mask loses more than 5% of its voxels."""
    rng = np.random.default_rng(seed)
    lost = 0
    for _ in range(n_cases):
        rot = Rotation.random(random_state=rng).as_matrix()
        corner = rng.uniform(-120, 120, 3)
        fov = rng.uniform(60, 100, 2)
        length = rng.uniform(40, 80)
        grids = []
        for _ in range(2):
            n = int(rng.integers(8, 20))
            matrix = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
            grids.append(slab_grid(rng, corner, rot, fov, n, length / n, matrix, int(rng.integers(2, 6))))
        src, dst = grids
        for out in (resample(np.ones(src.shape, np.float32), src, dst),
                    resample_mask(np.ones(src.shape, np.uint8), src, dst)):  # fmt: skip
            if max(float(np.mean(out[0] == 0)), float(np.mean(out[-1] == 0))) > 0.05:
                lost += 1
                break
    return lost / n_cases


def test_no_edge_slice_blanked_on_random_oblique_geometries():
    assert edge_loss_share(200, seed=10) == 0.0


def test_edge_slices_of_image_and_rtstruct_mask_survive_rounded_positions(tmp_path):
    site = tmp_path / "site"
    study = generate_uid()
    # one slab: T2 24 x 20 at 1.5 x 1.25 mm, T1 / T1CE 30 x 25 at 1.2 x 1.0 mm (same field of view);
    # the T1 planes sit 0.0004 mm above the T2 planes (DICOM rounding)
    write_series(site / "P1" / "t2", "P1", study, tr=4000, te=100, series_number=2, acq_time="100500",
                 origin=(-12.0, -15.0, -10.0))  # fmt: skip
    t1 = write_series(site / "P1" / "t1", "P1", study, tr=500, te=12, series_number=1, acq_time="100000",
                      rows=30, cols=25, spacing=(1.2, 1.0), origin=(-12.125, -15.15, -9.9996))  # fmt: skip
    write_series(site / "P1" / "t1c", "P1", study, tr=500, te=12, series_number=3, acq_time="102000",
                 rows=30, cols=25, spacing=(1.2, 1.0), origin=(-12.125, -15.15, -9.9996))  # fmt: skip
    first = min(t1, key=lambda f: f[1].ImagePositionPatient[2])[1]
    z0 = float(first.ImagePositionPatient[2])
    write_rtstruct(site / "P1" / "rs.dcm", "P1", study,
                   [("GTVnx", "GTV", [(square(0.0, 0.0, 4.0, z0), first.SOPInstanceUID)])])  # fmt: skip
    write_labels(site, [("P1", "NPC")])
    (pv,) = load_site(site).patients
    for seq in ("t1", "t1ce"):
        assert np.mean(pv.images[seq][0] == 0) < 0.05, seq
    assert pv.mask is not None and pv.mask[0].sum() > 0


# 3 -------------------------------------------------------------------------------------------------
def resave(path, **values) -> None:
    ds = pydicom.dcmread(path)
    for k, v in values.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)


def test_invalid_geometry_values_rejected_by_name(tmp_path):
    site = tmp_path / "site"
    p = write_patient(site, "P1", diagnosis_mask=False)
    for path, _ in p["t1"]:
        resave(path, PixelSpacing=[0, 0])  # every slice: the series cannot be placed
    t2 = sorted(p["t2"], key=lambda f: f[1].ImagePositionPatient[2])
    resave(t2[5][0], ImagePositionPatient=[-12.0, float("nan"), 10.0])
    t1ce = sorted(p["t1ce"], key=lambda f: f[1].ImagePositionPatient[2])
    resave(t1ce[6][0], ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
    write_labels(site, [("P1", "NPC")])
    cohort = load_site(site)
    codes = by_code(cohort.report)
    rejected = [q for q in codes["invalid_geometry"] if q.file.startswith("P1/t1/")]
    assert (
        len(rejected) == 1
        and "PixelSpacing 0\\0" in rejected[0].message
        and "t1 series 1" in rejected[0].message
    )
    dropped = {q.file: q.message for q in codes["invalid_geometry"]}
    assert "ImagePositionPatient -12\\nan\\10 is not finite" in dropped[t2[5][0].relative_to(site).as_posix()]
    assert "not two orthogonal unit vectors" in dropped[t1ce[6][0].relative_to(site).as_posix()]
    assert "series_split" not in codes  # the broken slice is dropped, not taken for another orientation
    (pv,) = cohort.patients
    assert "t1" not in pv.images and np.isfinite(pv.images["t2"]).all() and pv.images["t2"].shape[0] == 8


def test_mask_lost_or_shrunk_on_resampling_is_warned(tmp_path):
    site = tmp_path / "site"
    study = generate_uid()
    write_series(site / "P1" / "t2", "P1", study, tr=4000, te=100, series_number=2, acq_time="100500")
    # T1 / T1CE slab 20 mm above the T2 slab (z -10..18 mm): overlapping by 8 mm only
    for name, number, time in (("t1", 1, "100000"), ("t1c", 3, "102000")):
        files = write_series(site / "P1" / name, "P1", study, tr=500, te=12, series_number=number,
                             acq_time=time, origin=(-12.0, -15.0, 10.0))  # fmt: skip
    by_z = sorted(files, key=lambda f: f[1].ImagePositionPatient[2])
    contours = [(square(0, 0, 4, float(ds.ImagePositionPatient[2])), ds.SOPInstanceUID) for _, ds in by_z]
    write_rtstruct(site / "P1" / "rs_all.dcm", "P1", study, [("GTVnx", "GTV", contours)])
    write_rtstruct(site / "P1" / "rs_far.dcm", "P1", study, [("GTVp", "GTV", contours[-2:])])
    write_labels(site, [("P1", "NPC")])
    for name, code, phrase in (("rs_far.dcm", "empty_mask", "nothing left on the reference grid"),
                               ("rs_all.dcm", "mask_shrunk", "left on the reference grid")):  # fmt: skip
        other = site / "P1" / ("rs_all.dcm" if name == "rs_far.dcm" else "rs_far.dcm")
        hidden = other.rename(tmp_path / other.name)
        (q,) = by_code(load_site(site).report)[code]
        assert q.file == f"P1/{name}" and phrase in q.message
        hidden.rename(other)


# 4 -------------------------------------------------------------------------------------------------
def test_resent_slice_with_the_same_sop_uid_at_another_position_is_reported_and_dropped(tmp_path):
    site = tmp_path / "site"
    p = write_patient(site, "P1")
    t2 = sorted(p["t2"], key=lambda f: f[1].ImagePositionPatient[2])
    ds = pydicom.dcmread(t2[3][0])
    ds.ImagePositionPatient = [-12.0, -15.0, 40.0]  # re-sent with the position of a slice beyond the stack
    ds.save_as(site / "P1" / "t2" / "resent.dcm", enforce_file_format=True)
    write_labels(site, [("P1", "NPC")])
    cohort = load_site(site)
    dup = by_code(cohort.report)["duplicate_sop_uid"]
    assert {q.file for q in dup} == {"P1/t2/resent.dcm", t2[3][0].relative_to(site).as_posix()}
    assert "40.00 mm" in dup[0].message
    (pv,) = cohort.patients
    assert pv.images["t2"].shape[0] == 8  # not stretched to 40 mm by the extra slice


def test_slice_mis_merged_into_another_series_is_reported_and_dropped(tmp_path):
    site = tmp_path / "site"
    p = write_patient(site, "P1")
    ds = pydicom.dcmread(p["t1"][2][0])  # a T1 slice filed under the T1CE series
    ds.SeriesInstanceUID = p["t1ce"][0][1].SeriesInstanceUID
    ds.save_as(site / "P1" / "t1c" / "stray.dcm", enforce_file_format=True)
    write_labels(site, [("P1", "NPC")])
    cohort = load_site(site)
    dup = by_code(cohort.report)["duplicate_sop_uid"]
    assert {q.file for q in dup} == {"P1/t1c/stray.dcm", p["t1"][2][0].relative_to(site).as_posix()}
    assert "duplicate_slice" not in by_code(cohort.report)  # not mistaken for a copy at the same position
    (pv,) = cohort.patients
    assert set(pv.images) == {"t1", "t2", "t1ce"}


# 5 -------------------------------------------------------------------------------------------------
def test_constant_volume_is_not_usable(tmp_path):
    site = tmp_path / "site"
    p = write_patient(site, "P1")
    for path, _ in p["t1ce"]:
        ds = pydicom.dcmread(path)
        ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    write_labels(site, [("P1", "NPC")])
    cohort = load_site(site)
    (q,) = by_code(cohort.report)["constant_volume"]
    assert q.file.startswith("P1/t1c/") and "every voxel of the 8 slices is 0" in q.message
    (pv,) = cohort.patients
    assert "t1ce" not in pv.images


# 6 -------------------------------------------------------------------------------------------------
def test_scrubber_whole_tokens_real_paths_locally_pseudonyms_outside(tmp_path, capsys):
    from client.app import _scrub
    from client.cli import main as site_cli
    from client.node_data import SiteData

    site = tmp_path / "hospital"
    # PatientID "01": file names IM0001.dcm...; name parts that are ordinary words; folders named after
    # a name part ("test_files") and after the id ("01")
    files = write_series(site / "test_files" / "01" / "t2", "01", generate_uid(), tr=4000, te=100,
                         patient_name="Test^Patient")  # fmt: skip
    for k, (path, _) in enumerate(files):
        path.rename(path.with_name(f"IM{k + 1:04d}.dcm"))
    victim = path.with_name("IM0003.dcm")
    victim.write_bytes(victim.read_bytes()[:-40])  # truncated: reported with its path
    other = write_patient(site, "HOSP-7", folder="HOSP-7_20230101")
    other["t2"][0][0].write_bytes(b"cut")  # a file reported inside the folder named after the id
    write_labels(site, [("01", "NPC"), ("HOSP-7", "NPL")])
    report = load_site(site).report
    table = report.format_table(show_ids=True)
    (bad,) = [p for p in report.problems if p.code == "bad_pixels"]
    assert {p.file for p in report.problems if p.code == "not_dicom"} == {"HOSP-7_20230101/t2/002_000.dcm"}
    assert bad.file == "test_files/01/t2/IM0003.dcm" and (site / bad.file).exists()
    assert all((site / p.file).exists() for p in report.problems if p.file), "reported path not on disk"
    assert "[test_files/01/t2/IM0003.dcm]" in table
    public = report.to_json()
    p01, p7 = pseudonym("01"), pseudonym("HOSP-7")
    assert f"test_files/{p01}/t2/IM0003.dcm" in public  # id as a folder: pseudonymised, file name intact
    assert "HOSP-7" not in public and f"{p7}_20230101/" in public
    assert "no RTSTRUCT or SEG object for this patient" in public  # "Patient" is a name part, not an id
    default = report.format_table()
    assert "HOSP-7" not in default and "/01/" not in default and "IM0003.dcm" in default
    # what goes to the server: strict (ids anywhere, every name part), absolute paths removed
    data = SiteData(None, [], report)
    sent = _scrub(f"failed on HOSP-7x/IM0001.dcm for Test^Patient at {site}/x", data)
    assert "HOSP-7" not in sent and "Test" not in sent and "Patient" not in sent and str(site) not in sent
    assert site_cli(["validate", str(site), "--show-ids", "--no-progress"]) == 0
    assert "[test_files/01/t2/IM0003.dcm]" in capsys.readouterr().out


# 7 -------------------------------------------------------------------------------------------------
def test_labels_row_without_images_names_its_line_and_raw_id_only_locally(tmp_path):
    site = tmp_path / "site"
    write_patient(site, "P1")
    write_patient(site, "P2")
    write_labels(site, [("P1", "NPC"), ("P2", "NPL"), ("HOSP-404", "NPC")])
    report = load_site(site).report
    (q,) = [p for p in report.problems if p.code == "label_without_data"]
    assert q.file == "labels.csv" and q.message.startswith("line 4:") and q.patient == pseudonym("HOSP-404")
    assert "line 4:" in report.to_json() and "HOSP-404" not in report.to_json()
    assert "HOSP-404" not in report.format_table()
    assert "line 4:" in report.format_table() and "patient_id 'HOSP-404'" in report.format_table(
        show_ids=True
    )


# 8 -------------------------------------------------------------------------------------------------
def write_ybr_422_secondary_capture(path, patient_id: str) -> None:
    """Uncompressed YBR_FULL_422 secondary capture: 2 bytes per pixel (chroma shared by pixel pairs)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "OT", patient_id, "Doe^Jane"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "100000", "1", ""
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 20, 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 64, 64, 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256)) * 32  # 64 x 64 x 2 bytes; 64 x 64 x 3 without the subsampling
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def test_valid_dicomdir_and_ybr_422_are_not_truncated_but_a_cut_file_is(tmp_path):
    from pydicom.fileset import FileSet

    staging = tmp_path / "staging"
    p = write_patient(staging, "P1")
    write_ybr_422_secondary_capture(staging / "sc.dcm", "P1")
    fs = FileSet()
    for path in sorted(staging.rglob("*.dcm")):
        if path.name != "rs.dcm":
            fs.add(path)
    site = tmp_path / "cd"
    fs.write(site)  # CD-style export: DICOMDIR + DICOM/<generated names>
    shutil.copy(staging / "P1" / "rs.dcm", site / "rs.dcm")
    assert (site / "DICOMDIR").exists()
    write_labels(site, [("P1", "NPC")])
    victim = sorted(f for f in (site / "PT000000").rglob("*") if f.is_file())[0]  # an MR slice
    cut = site / "cut_copy"
    cut.write_bytes(victim.read_bytes()[:-7])
    report = load_site(site).report
    bad = [(p.code, p.file) for p in report.problems if p.code in ("unreadable", "bad_pixels")]
    assert bad == [("bad_pixels", "cut_copy")]
    assert [p.severity for p in report.problems if p.code == "dicomdir"] == ["info"]
    assert report.patients[0].usable and len(p["t2"]) == 8


# 9 -------------------------------------------------------------------------------------------------
def test_symlinked_export_followed_once_and_loops_named(tmp_path):
    site = tmp_path / "site"
    export = tmp_path / "pacs_export"  # the export lives elsewhere, linked into the site folder
    write_patient(export, "P1")
    write_labels(site, [("P1", "NPC")])
    (site / "export").symlink_to(export, target_is_directory=True)
    (export / "P1" / "again").symlink_to(export, target_is_directory=True)  # a loop
    (export / "P1" / "t2" / "up").symlink_to(export / "P1", target_is_directory=True)  # a deeper loop
    (site / "t1_again").symlink_to(site / "export" / "P1" / "t1", target_is_directory=True)
    (site / "gone").symlink_to(tmp_path / "missing")
    cohort = load_site(site)
    assert len(cohort.patients) == 1 and set(cohort.patients[0].images) == {"t1", "t2", "t1ce"}
    codes = by_code(cohort.report)
    assert sorted(p.file for p in codes["link_not_followed"]) == [
        "export/P1/again",
        "export/P1/t2/up",
        "t1_again",
    ]
    assert "duplicate_slice" not in codes  # nothing read twice
    assert [p.file for p in codes["broken_link"]] == ["gone"]
    assert all((site / p.file).exists() or p.code == "broken_link" for p in cohort.report.problems if p.file)


# 10 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smaller_defects_site(tmp_path_factory):
    """Folders not named after the ids (paths are the same before and after scrubbing).

    P1: axial + coronal + sagittal T2, a quantitative T1 map, an RTSTRUCT with malformed ContourData,
    a file cut inside its header; P2: DICOM but no labels.csv row; P3: labelled."""
    site = tmp_path_factory.mktemp("smaller") / "site"
    p = write_patient(site, "P1", diagnosis_mask=False, folder="a")
    study = p["study"]
    write_series(
        site / "a" / "t2_cor", "P1", study, tr=4000, te=100, series_number=7, iop=(1, 0, 0, 0, 0, -1)
    )
    write_series(
        site / "a" / "t2_sag", "P1", study, tr=4000, te=100, series_number=8, iop=(0, 1, 0, 0, 0, -1)
    )
    write_series(site / "a" / "t1map", "P1", study, tr=5000, te=3, scanning="IR", series_number=9,
                 description="T1 map", image_type=("DERIVED", "PRIMARY", "T1 MAP"))  # fmt: skip
    rs = write_rtstruct(
        site / "a" / "rs.dcm", "P1", study, [("GTVnx", "GTV", [(square(0, 0, 4, -2.0), None)])]
    )
    rs.ROIContourSequence[0].ContourSequence[0].ContourData = [1.0] * 7
    rs.save_as(site / "a" / "rs.dcm", enforce_file_format=True)
    write_patient(site, "P2")
    write_patient(site, "P3")
    data = (site / "a" / "t2_cor" / "007_000.dcm").read_bytes()
    (site / "a" / "cut.dcm").write_bytes(data[:900])
    write_labels(site, [("P1", "NPC"), ("P3", "NPL")])
    return load_site(site).report


def test_coronal_and_sagittal_companions_are_a_note(smaller_defects_site):
    (cand,) = by_code(smaller_defects_site)["several_candidates"]
    assert cand.severity == "info" and "t2:" in cand.message


def test_malformed_contour_data_is_named(smaller_defects_site):
    codes = by_code(smaller_defects_site)
    (bad_rs,) = codes["malformed_contour"]
    assert "contour 1: ContourData has 7 values, not x\\y\\z triplets" in bad_rs.message
    assert "no_tumour_roi" not in codes


def test_index_level_problem_names_the_patient_of_its_header(smaller_defects_site):
    (cut,) = [q for q in smaller_defects_site.problems if q.file == "a/cut.dcm"]
    assert cut.code == "unreadable" and "truncated header" in cut.message and cut.patient == pseudonym("P1")


def test_quantitative_t1_map_is_not_called_flair(smaller_defects_site):
    msgs = [q.message for q in smaller_defects_site.problems if q.file.startswith("a/t1map/")]
    assert msgs and "quantitative map (ImageType T1 MAP)" in msgs[0] and "FLAIR" not in msgs[0]


def test_unlabelled_patient_has_no_classifier_split(smaller_defects_site):
    rows = {r.pseudonym: r for r in smaller_defects_site.patients}
    p2, p3 = rows[pseudonym("P2")], rows[pseudonym("P3")]
    assert p2.label == "-" and p2.split.startswith("seg:")  # its mask still trains the segmenter
    assert p3.split in ("train", "val", "test")
    assert f"{p2.pseudonym:<22} -     seg:" in smaller_defects_site.format_table()


def test_scrubber_names_in_every_usual_spelling_never_single_words():
    from shared.data.report import Scrubber

    s = Scrubber()
    s.add("01", "p-a")
    s.add_name("Zhang^San=张^三", "p-b")
    s.add_name("Test^Patient", "p-c")
    assert (
        s.scrub("IM0001.dcm 01/x.dcm gap of 8.01 mm, 01.5 mm")
        == "IM0001.dcm p-a/x.dcm gap of 8.01 mm, 01.5 mm"
    )
    assert s.scrub("张三_MR/1.dcm ZHANG_SAN/2.dcm san zhang 张^三") == "p-b_MR/1.dcm p-b/2.dcm p-b p-b"
    assert s.scrub("test_files: no usable patient; Test Patient") == "test_files: no usable patient; p-c"
    assert s.scrub("Zhang test 01x", strict=True) == "p-b p-c p-ax"  # server-bound: every part, ids anywhere
