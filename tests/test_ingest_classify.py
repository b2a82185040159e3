"""Sequence classification from headers: TR/TE, GRE, EP, contrast agent, tokens, time order, site mapping."""

from __future__ import annotations

import json

from pydicom.uid import generate_uid

from shared.data.dicom.classify import apply_time_order, choose, classify_series
from shared.data.dicom.index import index_tree
from shared.data.dicom.series import group_series
from shared.data.mapping import load_mapping
from shared.data.settings import IngestSettings
from shared.data.site import load_site
from tests.ingest_factory import write_labels, write_patient, write_series

S = IngestSettings()


def groups_of(folder):
    return group_series([h for e in index_tree(folder).values() for h in e.headers])


def one(tmp_path, name, **kw):
    write_series(tmp_path / name, "P1", kw.pop("study", "1.2.3"), n_slices=3, **kw)
    (g,) = groups_of(tmp_path / name)
    return g, classify_series(g, S)


def test_rules(tmp_path):
    assert one(tmp_path, "a", tr=550, te=12)[1].sequence == "t1"
    assert one(tmp_path, "b", tr=3500, te=95)[1].sequence == "t2"
    g, c = one(tmp_path, "c", tr=8.5, te=3.1, scanning="GR")
    assert c.sequence == "t1" and "3D T1" in c.reason
    assert one(tmp_path, "d", tr=6600, te=93, scanning="EP")[1].excluded.startswith("ScanningSequence EP")
    assert one(tmp_path, "e", tr=550, te=12, agent="Gadovist")[1].sequence == "t1ce"
    assert one(tmp_path, "f", tr=550, te=12, agent="")[1].sequence == "t1"  # present but empty
    assert one(tmp_path, "g", tr=None, te=None, description="+C Ax T1 FS")[1].sequence == "t1ce"
    assert one(tmp_path, "h", tr=None, te=None, description="Ax T2 FSE")[1].sequence == "t2"
    assert one(tmp_path, "i", tr=None, te=None, description="t1_tse_tra_增强")[1].sequence == "t1ce"
    assert one(tmp_path, "i2", tr=500, te=12, description="T1W_TSE_GD")[1].sequence == "t1ce"
    assert one(tmp_path, "i3", tr=500, te=12, description="T1 pre-contrast")[1].sequence == "t1"
    assert one(tmp_path, "j", tr=1500, te=45)[1].sequence is None  # neither rule, no tokens
    assert "localiser" in one(tmp_path, "k", tr=8, te=3, scanning="GR", description="3-Plane Loc")[1].excluded
    assert (
        "LOCALIZER"
        in one(tmp_path, "l", tr=8, te=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))[1].excluded
    )
    assert one(tmp_path, "m", tr=500, te=10, image_type=("DERIVED", "PRIMARY", "ADC"))[1].excluded
    assert one(tmp_path, "n", tr=9000, te=120, description="T2 FLAIR")[1].excluded


def test_second_t1_of_study_is_t1ce_by_acquisition_time(tmp_path):
    study = generate_uid()
    write_series(tmp_path / "pre", "P1", study, n_slices=3, tr=500, te=10, acq_time="101500", series_number=3)
    write_series(
        tmp_path / "post", "P1", study, n_slices=3, tr=500, te=10, acq_time="103000", series_number=7
    )
    items = [(g, classify_series(g, S)) for g in groups_of(tmp_path)]
    assert [c.sequence for _, c in items] == ["t1", "t1"]
    out = {g.first.series_number: c for g, c in apply_time_order(items)}
    assert out[3].sequence == "t1" and out[7].sequence == "t1ce"
    assert "after another T1" in out[7].reason


def test_agent_typed_on_every_series_keeps_the_earliest_t1(tmp_path):
    study = generate_uid()
    write_series(
        tmp_path / "pre",
        "P1",
        study,
        n_slices=3,
        tr=500,
        te=10,
        acq_time="101500",
        agent="Gd",
        series_number=1,
    )
    write_series(
        tmp_path / "post",
        "P1",
        study,
        n_slices=3,
        tr=500,
        te=10,
        acq_time="103000",
        agent="Gd",
        series_number=2,
    )
    out = {
        g.first.series_number: c
        for g, c in apply_time_order([(g, classify_series(g, S)) for g in groups_of(tmp_path)])
    }
    assert (out[1].sequence, out[2].sequence) == ("t1", "t1ce")


def test_two_candidates_choose_axial_with_most_slices_and_report(tmp_path):
    study = generate_uid()
    write_series(tmp_path / "ax", "P1", study, n_slices=5, tr=4000, te=100, series_number=2)
    write_series(tmp_path / "ax_more", "P1", study, n_slices=7, tr=4000, te=100, series_number=4)
    write_series(
        tmp_path / "cor", "P1", study, n_slices=9, tr=4000, te=100, series_number=5, iop=(1, 0, 0, 0, 0, -1)
    )
    items = [(g, classify_series(g, S)) for g in groups_of(tmp_path)]
    chosen, note = choose(items)
    assert chosen.first.series_number == 4
    assert "3 candidate series" in note and "not used" in note


def test_site_mapping_overrides_rules(tmp_path):
    site = tmp_path / "site"
    write_patient(site, "P1", folder="a")
    write_patient(site, "P2", folder="b")
    write_series(
        site / "a" / "x", "P1", "9.9", n_slices=3, tr=4000, te=100, description="NPX SEQ-B", series_number=9
    )
    (site / "site_mapping.json").write_text(
        json.dumps({"series": {"^NPX SEQ-B$": "ignore"}, "roi_names": ["^gtv"]})
    )
    mapping = load_mapping(site)
    assert mapping.classify("NPX SEQ-B") == ("ignore", "^NPX SEQ-B$") and mapping.roi_names == ("^gtv",)
    write_labels(site, [("P1", "NPC"), ("P2", "NPL")])
    cohort = load_site(site)
    msgs = [p.message for p in cohort.report.problems if p.code == "series_excluded"]
    assert any("site_mapping" in m and "ignore" in m for m in msgs)
    assert not cohort.report.blocking


def test_bad_site_mapping_is_blocking_and_named(tmp_path):
    site = tmp_path / "site"
    write_patient(site, "P1", folder="a")
    write_labels(site, [("P1", "NPC")])
    (site / "site_mapping.json").write_text(json.dumps({"series": {"T2": "flair"}}))
    cohort = load_site(site)
    (p,) = [p for p in cohort.report.blocking if p.code == "bad_site_mapping"]
    assert "site_mapping.json" in p.message and "'flair'" in p.message
