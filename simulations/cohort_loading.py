"""Patients for one-machine runs: ingest site folders, or generate the synthetic hospitals first."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.data.patient import PatientVolumes
from shared.errors import SiteDataError

log = logging.getLogger(__name__)

#: Synthetic cohort sizes per run preset: (sites, patients per site).
#: Toy acquisition grid: 48 px, 8-10 thick slices, same field of view as the default (seconds to generate).
TOY_GRID_ARGS: dict[str, Any] = {
    "matrix": 48, "pixel_mm": (3.8, 4.6), "n_slices": (8, 10), "thickness_mm": (7.0, 8.0)
}  # fmt: skip
SYNTH_SIZES: dict[str, tuple[int, int | None]] = {"toy": (2, 10), "default": (3, None), "paper": (3, None)}


def site_folders(data_dir: Path) -> list[Path]:
    """Sub-folders of ``data_dir`` not starting with ``_`` or ``.`` (``_truth``, ``_cache`` are skipped)."""
    if not data_dir.is_dir():
        raise SiteDataError(
            f"data folder {data_dir} not found; expected a folder with one sub-folder per site"
        )
    sites = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not sites:
        raise SiteDataError(f"data folder {data_dir} has no site sub-folders (names not starting with '_')")
    return sites


def load_sites(data_dir: Path, cache_root: Path | None, progress: bool) -> tuple[list[PatientVolumes], dict]:
    """Ingest every site; returns pooled patients and a per-site summary (counts only)."""
    from shared.data.site import load_site

    pooled: list[PatientVolumes] = []
    summary: dict[str, Any] = {}
    for site in site_folders(data_dir):
        t0 = time.perf_counter()
        cohort = load_site(
            site, cache_dir=(cache_root / site.name) if cache_root else None, progress=progress
        )
        pooled += cohort.patients
        summary[site.name] = {
            "patients": len(cohort.patients),
            "labelled": len(cohort.labelled),
            "npc": sum(1 for p in cohort.labelled if p.label == 0),
            "npl": sum(1 for p in cohort.labelled if p.label == 1),
            "with_mask": sum(1 for p in cohort.patients if p.mask is not None),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("site %s: %s", site.name, summary[site.name])
    return pooled, summary


def load_or_generate(
    out: Path,
    data_dir: Path | None,
    preset: str,
    sites: int | None,
    patients: int | None,
    seed: int,
    progress: bool,
) -> tuple[list[PatientVolumes], dict[str, Any]]:
    """Patients from ``data_dir``, or from synthetic hospitals generated into ``out/cohort`` (reused if there)."""
    source: dict[str, Any] = {}
    if data_dir is None:
        from simulations.synth.cohort import CohortConfig, generate_cohort
        from simulations.synth.site_profile import GridPreset

        TOY_GRID = GridPreset(**TOY_GRID_ARGS)

        data_dir = out / "cohort"
        if not data_dir.exists() or not any(data_dir.iterdir()):
            n_sites, n_patients = SYNTH_SIZES[preset]
            synth_preset = "paper" if preset == "paper" else "default"
            config = CohortConfig.preset(
                synth_preset, sites=sites or n_sites, patients=patients or n_patients, seed=seed
            )
            if preset == "toy":
                config = replace(config, grid=TOY_GRID)
            t0 = time.perf_counter()
            generate_cohort(data_dir, config, progress=progress)
            source["synth_seconds"] = round(time.perf_counter() - t0, 1)
        source["synthetic"] = True
    else:
        source["synthetic"] = False
    t0 = time.perf_counter()
    pooled, per_site = load_sites(data_dir, out / "_cache", progress)
    source.update(data_dir=str(data_dir), sites=per_site, ingest_seconds=round(time.perf_counter() - t0, 1))
    return pooled, source
