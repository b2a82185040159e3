"""Ingestion throughput (cold cache) vs a bare ``pydicom.dcmread`` loop over the same files.

Usage::

    python -m simulations.bench_ingest [SITE_DIR ...] [--patients N] [--repeat R]

Without SITE_DIR, synthetic hospitals are written to a temporary folder with
``simulations.synth`` (3 sites, N patients each). For each site it prints: MR slices, files,
seconds and slices/s for (a) ``dcmread`` of every file, (b) ``dcmread`` + ``pixel_array``, and
(c) ``load_site`` with an empty cache (index, classification, geometry, pixels, resampling, masks),
then (d) ``load_site`` again with the warm cache; the ratio column is (c) / (b). Best of R runs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import pydicom

from shared.data.dicom.index import list_files
from shared.data.site import load_site


def _bare_read(files: list[Path], pixels: bool) -> int:
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            try:
                ds = pydicom.dcmread(f, force=True)
                if pixels and "PixelData" in ds:
                    ds.pixel_array  # noqa: B018 (decode)
                n += 1
            except Exception:
                pass
    return n


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_site(site: Path, repeat: int) -> dict[str, float]:
    files = [f for f in list_files(site)[0] if f.name not in ("labels.csv", "site_mapping.json")]
    cohort = load_site(site)  # warms the OS file cache
    t_read = _best(lambda: _bare_read(files, pixels=False), repeat)
    t_pix = _best(lambda: _bare_read(files, pixels=True), repeat)

    def cold() -> None:
        with tempfile.TemporaryDirectory() as cache:
            load_site(site, cache_dir=Path(cache))

    t_cold = _best(cold, repeat)
    with tempfile.TemporaryDirectory() as cache:
        load_site(site, cache_dir=Path(cache))
        t_warm = _best(lambda: load_site(site, cache_dir=Path(cache)), repeat)
    return {"files": len(files), "dicom": cohort.report.files_dicom, "read": t_read, "pixels": t_pix,
            "cold": t_cold, "warm": t_warm}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sites", nargs="*", type=Path, help="site folders (default: synthetic)")
    parser.add_argument("--patients", type=int, default=6, help="patients per synthetic site (default 6)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement, best kept (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = None
    sites = args.sites
    if not sites:
        from simulations.synth.cohort import CohortConfig, generate_cohort

        tmp = tempfile.TemporaryDirectory()
        generate_cohort(
            Path(tmp.name), CohortConfig.preset("default", sites=3, patients=args.patients), progress=False
        )
        sites = sorted(p for p in Path(tmp.name).iterdir() if p.is_dir() and not p.name.startswith("_"))
    head = f"{'site':<14}{'files':>7}{'dcmread/s':>11}{'+pixels/s':>11}{'ingest/s':>10}{'cached/s':>10}{'ratio':>7}"
    print(head)
    print("-" * len(head))
    tot = {"files": 0, "read": 0.0, "pixels": 0.0, "cold": 0.0, "warm": 0.0}
    for site in sites:
        r = bench_site(site, args.repeat)
        for k in tot:
            tot[k] += r[k]
        n = r["files"]
        print(f"{site.name:<14}{n:>7}{n / r['read']:>11.0f}{n / r['pixels']:>11.0f}{n / r['cold']:>10.0f}"
              f"{n / r['warm']:>10.0f}{r['pixels'] / r['cold']:>7.2f}")  # fmt: skip
    n = tot["files"]
    print(f"{'all':<14}{n:>7}{n / tot['read']:>11.0f}{n / tot['pixels']:>11.0f}{n / tot['cold']:>10.0f}"
          f"{n / tot['warm']:>10.0f}{tot['pixels'] / tot['cold']:>7.2f}")  # fmt: skip
    print("units: DICOM files (slices) per second; ingest = load_site with an empty cache; "
          "ratio = (dcmread + pixel_array time) / (ingest time)")  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
