"""ROI datasets built at a site with the final global segmenter, cached on disk between messages.

Key: SHA-256 of (segmenter hash, ROI settings, dataset names). ``query.roi`` builds and writes; ``train.cls`` /
``evaluate.cls`` (possibly in fresh processes) read. Files stay at the site (they hold image crops and labels):
folders 0700, files 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from shared import protocol as P
from shared.config import PipelineConfig, parse_dataset_name
from shared.errors import SiteDataError
from shared.roi.datasets import RoiDataset


def roi_key(segmenter_hash: str, cfg: PipelineConfig) -> str:
    settings = {
        "seg": segmenter_hash,
        "size": cfg.cls.image_size,
        "slices": cfg.cls.slices_per_patient,
        "margin": cfg.roi_margin,
        "datasets": list(cfg.datasets),
        "seg-size": cfg.seg.image_size,
        "seg-in": list(cfg.seg.in_sequences),
        "intensity": cfg.roi_intensity,  # the crops' values differ per roi-intensity: never reuse another's
        "context": cfg.roi_context,  # and per roi-context (tumour only, or the whole box)
        "unlabelled": True,  # caches written before unlabelled patients' crops were kept lack them
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def _path(cache_dir: Path, key: str, dataset: str) -> Path:
    return cache_dir / "roi" / key / f"{dataset.replace('+', 'plus')}.npz"


def _private_dir(cache_dir: Path, key: str) -> Path:
    """``<cache>/roi/<key>``, the ``roi`` and key folders 0700 (image crops and labels: the site's user only)."""
    folder = cache_dir / "roi" / key
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (cache_dir / "roi", folder):
        os.chmod(path, 0o700)
    return folder


def _write_private(path: Path, write) -> None:
    """``write(fh)`` into a 0600 temporary file beside ``path``, then rename it over ``path`` (no temp left)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_roi(cache_dir: Path, key: str, datasets: dict[str, RoiDataset], counts: dict | None = None) -> None:
    """Write each dataset, then ``report.json`` (per-dataset counts, no identifiers) last; folders 0700, files
    0600, like the ingest cache (``shared.data.cache``)."""
    folder = _private_dir(cache_dir, key)
    for name, ds in datasets.items():
        _write_private(
            _path(cache_dir, key, name),
            lambda fh, ds=ds: np.savez(
                fh,
                images=ds.images.numpy(),
                slice_patient=ds.slice_patient,
                patients=np.array(ds.patients, dtype=str),
                labels=ds.labels,
                split=np.array(ds.split, dtype=str),
                sequences=np.array(ds.sequences, dtype=str),
            ),
        )
    _write_private(folder / "report.json", lambda fh: fh.write(json.dumps(counts or {}).encode()))


def roi_report(cache_dir: Path, key: str) -> dict:
    path = cache_dir / "roi" / key / "report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def has_roi(cache_dir: Path, key: str, datasets: tuple[str, ...]) -> bool:
    done = (cache_dir / "roi" / key / "report.json").exists()
    return done and all(_path(cache_dir, key, d).exists() for d in datasets)


def requested_roi(conf, cache_dir: Path, cfg: PipelineConfig) -> tuple[str, RoiDataset]:
    """``(name, dataset)`` of the coordinator's ``dataset`` and ``segmenter-hash`` (a ``train.cls`` /
    ``evaluate.cls`` config). The name is checked before any file is touched: it names files in the site's cache,
    so only sequences joined by ``+`` pass, never a path (ConfigError naming the entry)."""
    name = str(conf[P.CFG_DATASET])
    parse_dataset_name(name)
    return name, load_roi(cache_dir, roi_key(str(conf[P.CFG_SEGMENTER_HASH]), cfg), name)


def load_roi(cache_dir: Path, key: str, dataset: str) -> RoiDataset:
    path = _path(cache_dir, key, dataset)
    if not path.exists():
        raise SiteDataError(
            f"no ROI cache for dataset {dataset!r} and this segmenter: query.roi must run at this site before "
            "stage 2 (the server sends it after stage 1)"
        )
    with np.load(path, allow_pickle=False) as d:
        return RoiDataset(
            dataset,
            tuple(str(s) for s in d["sequences"]),
            d["images"],
            d["slice_patient"],
            [str(p) for p in d["patients"]],
            [int(x) for x in d["labels"]],
            [str(s) for s in d["split"]],
        )
