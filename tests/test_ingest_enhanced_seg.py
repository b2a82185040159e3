"""Enhanced multi-frame MR (functional groups) and DICOM SEG masks inside a site."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from shared.data.dicom.index import read_header
from shared.data.site import load_site
from tests.ingest_factory import linear_field, write_enhanced, write_labels, write_patient


def test_enhanced_mr_frames_become_a_sorted_rescaled_volume(tmp_path):
    site = tmp_path / "site"
    study = generate_uid()
    write_enhanced(site / "a" / "enh.dcm", "P1", study)
    write_patient(site, "P2", folder="b")
    write_labels(site, [("P1", "NPC"), ("P2", "NPL")])
    cohort = load_site(site)
    (p1,) = [p for p in cohort.patients if set(p.images) == {"t2"}]
    vol = p1.images["t2"]
    assert vol.shape == (6, 16, 18) and p1.spacing_mm == pytest.approx((4.0, 1.5, 1.25))
    z, y, x = np.meshgrid(
        -10.0 + 4.0 * np.arange(6), -15.0 + 1.5 * np.arange(16), -12.0 + 1.25 * np.arange(18), indexing="ij"
    )
    expected = linear_field(np.stack([x, y, z], axis=-1))
    np.testing.assert_allclose(vol, expected, atol=1.01)  # slope 2: stored value rounded to 2 units
    row = next(r for r in cohort.report.patients if r.pseudonym == p1.pseudonym)
    assert "AcquisitionContrast T2" in row.sequences["t2"]


def test_enhanced_mr_without_functional_groups_is_rejected_cleanly(tmp_path):
    write_enhanced(tmp_path / "enh.dcm", "P1", generate_uid(), functional_groups=False)
    entry = read_header(tmp_path / "enh.dcm", "enh.dcm", 0, 0)
    assert entry.headers == []
    (p,) = entry.problems
    assert p.code == "enhanced_no_geometry"
    assert p.message.startswith("enh.dcm: Enhanced/multi-frame MR (6 frames) without functional groups")


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL"])
def test_seg_mask_from_highdicom_object(tmp_path, seg_type):
    site = tmp_path / "site"
    p = write_patient(site, "P1", folder="a", diagnosis_mask=False)
    write_patient(site, "P2", folder="b")
    sources = sorted((ds for _, ds in p["t2"]), key=lambda d: d.ImagePositionPatient[2])
    mask = np.zeros((len(sources), 24, 20), dtype=np.uint8)
    mask[3:5, 6:12, 4:9] = 1
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="GTVp",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.copy(),  # highdicom scales FRACTIONAL input in place
        segmentation_type=seg_type,
        segment_descriptions=[desc],
        series_instance_uid=generate_uid(),
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    seg.save_as(site / "a" / "seg.dcm")
    write_labels(site, [("P1", "NPC"), ("P2", "NPL")])
    cohort = load_site(site)
    row = next(r for r in cohort.report.patients if r.mask == "seg:GTVp")
    pv = next(v for v in cohort.patients if v.pseudonym == row.pseudonym)
    np.testing.assert_array_equal(pv.mask, mask)
