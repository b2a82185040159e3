"""labels.csv parsing, the ValidationReport (blocking rules, privacy) and `nasofl-site validate`."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from pydicom.data import get_testdata_file

from client.cli import main as site_cli
from shared.data.dicom.index import read_header
from shared.data.dicom.pixels import read_slice
from shared.data.labels import load_labels
from shared.data.site import load_site
from shared.errors import DicomError, SiteDataError
from shared.pseudonym import pseudonym
from tests.ingest_factory import write_labels, write_patient

RAW = ["HOSP-778812", "HOSP-778813", "HOSP-999999"]
NAMES = ["Doe^Jane", "Doe", "Jane"]


def test_labels_tolerant_case_and_whitespace(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("\ufeff Patient_ID , Diagnosis \n A1 , npc\nA2,NPL \n\nA3,  Npl\n")
    assert load_labels(p) == {"A1": 0, "A2": 1, "A3": 1}
    p.write_text("diagnosis;patient_id\nNPC;X\n")
    assert load_labels(p) == {"X": 0}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "id_of_patient,dx\nA,NPC\n",
            r"labels.csv line 1: header .* expected columns 'patient_id' and 'diagnosis'",
        ),
        ("patient_id,diagnosis\nA,NPC\nB,lymphoma\n", r"line 3: diagnosis 'lymphoma'; expected NPC or NPL"),
        ("patient_id,diagnosis\nA,NPC\nB,NPL\nA,NPL\n", r"line 4: duplicate patient_id \(first on line 2\)"),
        ("patient_id,diagnosis\n,NPC\n", r"line 2: empty patient_id"),
        ("", r"labels.csv: empty"),
    ],
)
def test_broken_labels_clear_errors(tmp_path, content, expected):
    p = tmp_path / "labels.csv"
    p.write_text(content)
    with pytest.raises(SiteDataError, match=expected) as err:
        load_labels(p)
    assert "HOSP" not in str(err.value)


def test_missing_labels_file(tmp_path):
    with pytest.raises(SiteDataError, match="labels.csv: not found"):
        load_labels(tmp_path / "labels.csv")


def make_site(tmp_path, labels=None):
    site = tmp_path / "hospital"
    # folders named after the raw ids, as PACS exports often are
    write_patient(site, RAW[0], folder=f"{RAW[0]}_20230101")
    write_patient(site, RAW[1], folder=f"{RAW[1]}")
    bad = site / RAW[1] / "t2"
    victim = sorted(bad.iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[:-50])  # truncated pixel data inside a folder named by the id
    write_labels(site, labels if labels is not None else [(RAW[0], "NPC"), (RAW[1], "NPL"), (RAW[2], "NPC")])
    return site


def test_report_and_logs_carry_pseudonyms_only(tmp_path, caplog):
    site = make_site(tmp_path)
    with caplog.at_level(logging.DEBUG):
        cohort = load_site(site, cache_dir=tmp_path / "cache")
        load_site(site, cache_dir=tmp_path / "cache")
    text = cohort.report.to_json()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for raw in RAW + NAMES:
        assert raw.lower() not in text.lower(), raw
        assert raw.lower() not in logs.lower(), raw
    data = json.loads(text)
    codes = {p["code"] for p in data["problems"]}
    assert {"label_without_data", "bad_pixels"} <= codes
    assert pseudonym(RAW[2]) in text  # unknown label reported by pseudonym
    assert data["patients_per_class"] == {"NPC": 1, "NPL": 1, "-": 0}
    assert data["ok"] is True
    assert all("raw_id" not in row for row in data["patients"])
    assert {row["pseudonym"] for row in data["patients"]} == {pseudonym(r) for r in RAW[:2]}
    bad = next(p for p in data["problems"] if p["code"] == "bad_pixels")
    assert bad["file"].startswith(pseudonym(RAW[1]) + "/t2/")
    # the human table shows raw ids only on request
    assert RAW[0] not in cohort.report.format_table()
    assert RAW[0] in cohort.report.format_table(show_ids=True)
    # the per-patient arrays in the cache carry no raw id (index.json does: it is a site-local header index)
    for f in (tmp_path / "cache").rglob("*.npz"):
        if f.is_file():
            blob = f.read_bytes()
            assert all(r.encode() not in blob for r in RAW), f


def test_exception_for_a_bad_file_has_no_patient_id(tmp_path):
    src = get_testdata_file("MR_truncated.dcm")
    shutil.copy(src, tmp_path / "slice.dcm")
    (h,) = read_header(tmp_path / "slice.dcm", "slice.dcm", 0, 0).headers
    assert h.patient_id == "4MR1"
    with pytest.raises(DicomError) as err:
        read_slice(tmp_path, h)
    assert "4MR1" not in str(err.value) and "CompressedSamples" not in str(err.value)
    assert str(err.value).startswith("slice.dcm:")


def test_unlabelled_patients_and_blocking_rules(tmp_path):
    site = make_site(tmp_path, labels=[(RAW[0], "NPC")])
    report = load_site(site).report
    assert [p.code for p in report.problems if p.code == "unlabelled_patient"] == ["unlabelled_patient"]
    assert {p.code for p in report.blocking} == {"missing_class"}  # no NPL at this site
    (site / "labels.csv").unlink()
    report = load_site(site).report
    assert "bad_labels" in {p.code for p in report.blocking}


def test_validate_command_exit_codes_and_json(tmp_path, capsys):
    site = make_site(tmp_path)
    out_json = tmp_path / "out" / "report.json"
    rc = site_cli(
        ["validate", str(site), "--json", str(out_json), "--cache", str(tmp_path / "c"), "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "RESULT: OK" in printed and "NPC 1/1, NPL 1/1" in printed
    assert RAW[0] not in printed
    data = json.loads(out_json.read_text())
    assert data["ok"] and all(r not in out_json.read_text() for r in RAW)
    rc = site_cli(["validate", str(site), "--show-ids", "--no-progress"])
    assert rc == 0 and RAW[0] in capsys.readouterr().out
    (site / "labels.csv").write_text("patient_id,diagnosis\nX,maybe\n")
    rc = site_cli(["validate", str(site), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 1 and "BLOCKING bad_labels" in printed and "line 2: diagnosis 'maybe'" in printed
    empty = tmp_path / "empty"
    write_labels(empty, [("A", "NPC")])
    assert site_cli(["validate", str(empty), "--no-progress"]) == 1
    assert "no_usable_patient" in capsys.readouterr().out
    assert site_cli(["validate", str(tmp_path / "nope"), "--no-progress"]) == 1


def test_unexpected_error_in_one_patient_skips_only_that_patient(tmp_path, monkeypatch):
    import shared.data.site as site_mod

    site = make_site(tmp_path)
    real = site_mod.ingest_patient

    def flaky(site_dir, headers, *args):
        if any(h.patient_id == RAW[0] for h in headers):
            raise RuntimeError(f"boom in {headers[0].path}")  # the path holds the raw id
        return real(site_dir, headers, *args)

    monkeypatch.setattr(site_mod, "ingest_patient", flaky)
    cohort = load_site(site)
    (p,) = [p for p in cohort.report.problems if p.code == "ingest_error"]
    assert p.patient == pseudonym(RAW[0]) and RAW[0] not in p.message and "RuntimeError" in p.message
    assert [v.pseudonym for v in cohort.patients] == [pseudonym(RAW[1])]


def test_label_ids_match_patient_ids_case_insensitively(tmp_path):
    site = make_site(tmp_path, labels=[(RAW[0].lower(), "NPC"), (RAW[1], "NPL")])
    report = load_site(site).report
    assert report.class_counts() == {"NPC": 1, "NPL": 1, "-": 0}
    assert not [p for p in report.problems if p.code in ("unlabelled_patient", "label_without_data")]
