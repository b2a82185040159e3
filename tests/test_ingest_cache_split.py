"""Per-patient cache (hit, invalidation, sources untouched) and the patient-level split."""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from shared.data.settings import IngestSettings
from shared.data.site import load_site
from shared.data.split import patient_split
from shared.errors import ConfigError
from tests.ingest_factory import write_labels, write_patient


def tree_digest(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (
                hashlib.sha256(open(p, "rb").read()).hexdigest() + f":{st.st_mtime_ns}"
            )
    return out


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "hospital"
    ids = [("P1", "NPC"), ("P2", "NPL"), ("P3", "NPC"), ("P4", "NPL")]
    info = {pid: write_patient(site, pid, folder=f"f{i}") for i, (pid, _) in enumerate(ids)}
    write_labels(site, ids)
    return site, info


def test_second_load_reads_the_cache_and_sources_stay_untouched(site, tmp_path):
    site_dir, _ = site
    before = tree_digest(site_dir)
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    cold = load_site(site_dir, cache_dir=cache)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = load_site(site_dir, cache_dir=cache)
    t_warm = time.perf_counter() - t0
    assert all(row.cached for row in warm.report.patients) and not any(
        row.cached for row in cold.report.patients
    )
    assert t_warm < t_cold
    for a, b in zip(cold.patients, warm.patients, strict=True):
        assert (a.pseudonym, a.label, a.split, a.spacing_mm) == (b.pseudonym, b.label, b.split, b.spacing_mm)
        assert a.images.keys() == b.images.keys()
        for k in a.images:
            np.testing.assert_array_equal(a.images[k], b.images[k])
            assert b.images[k].dtype == np.float32
        np.testing.assert_array_equal(a.mask, b.mask)
    assert [p.code for p in cold.report.problems] == [p.code for p in warm.report.problems]
    assert tree_digest(site_dir) == before  # nothing written or modified in the site folder
    assert not any(".npz" in f or "index.json" in f for f in before)


def test_changed_source_or_setting_invalidates(site, tmp_path):
    site_dir, info = site
    cache = tmp_path / "cache"
    load_site(site_dir, cache_dir=cache)
    path, ds = info["P2"]["t2"][0]
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    again = load_site(site_dir, cache_dir=cache)
    fresh = {row.pseudonym: row.cached for row in again.report.patients}
    assert sorted(fresh.values()) == [False, True, True, True]
    p2 = next(p for p in again.patients if not fresh[p.pseudonym])
    assert p2.label == 1
    other = load_site(site_dir, cache_dir=cache, settings=IngestSettings(gap_factor=2.0))
    assert not any(row.cached for row in other.report.patients)
    split_only = load_site(site_dir, cache_dir=cache, settings=IngestSettings(gap_factor=2.0, split_seed=5))
    assert all(row.cached for row in split_only.report.patients)  # split settings do not touch the arrays


def test_split_deterministic_stratified_fractions_no_straddling():
    labels = {f"p-{i:04d}": (1 if i % 4 == 0 else 0) for i in range(200)}  # 50 NPL, 150 NPC
    a = patient_split(labels, (0.6, 0.2, 0.2), seed=1)
    assert a == patient_split(dict(reversed(list(labels.items()))), (0.6, 0.2, 0.2), seed=1)
    assert a != patient_split(labels, (0.6, 0.2, 0.2), seed=2)
    assert set(a) == set(labels)  # each patient exactly once: no straddling
    for cls, n in ((0, 150), (1, 50)):
        c = Counter(a[p] for p, lab in labels.items() if lab == cls)
        assert c == {"train": round(0.6 * n), "val": round(0.2 * n), "test": round(0.2 * n)}
    # adding patients keeps most earlier assignments (hash order, not list order)
    more = dict(labels, **{f"p-new{i}": 0 for i in range(10)})
    b = patient_split(more, (0.6, 0.2, 0.2), seed=1)
    assert sum(a[p] == b[p] for p in labels) >= 180


def test_split_small_strata_and_unlabelled():
    labels = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1, "f": None}
    out = patient_split(labels, (0.6, 0.2, 0.2), seed=0)
    assert Counter(out[p] for p in "abc") == {"train": 1, "val": 1, "test": 1}
    assert set(out) == set(labels)
    assert patient_split(labels, (1.0, 0.0, 0.0)) == dict.fromkeys(labels, "train")


def test_settings_validation_names_key():
    with pytest.raises(ConfigError, match="split_fractions"):
        IngestSettings(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="reference_sequence"):
        IngestSettings(reference_sequence="flair")
    with pytest.raises(ConfigError, match="roi_patterns"):
        IngestSettings(roi_patterns=("gtv(",))
    s = IngestSettings()
    assert s.cache_key() == IngestSettings().cache_key() != replace(s, roi_patterns=("^x$",)).cache_key()


def test_cache_inside_site_folder_only_when_asked_and_never_indexed(site):
    site_dir, _ = site
    inside = site_dir / "nasofl_cache"
    load_site(site_dir, cache_dir=inside)
    again = load_site(site_dir, cache_dir=inside)
    assert any(inside.rglob("*.npz"))
    assert not [p for p in again.report.problems if p.code in ("not_dicom", "unreadable")]
    sources = [
        f for f in site_dir.rglob("*") if f.is_file() and inside not in f.parents and f.name != "labels.csv"
    ]
    assert again.report.files_indexed == len(sources)  # the cache's own files are never indexed
    assert all(row.cached for row in again.report.patients)
