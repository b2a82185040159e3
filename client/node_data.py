"""Where a node's data lives, and loading it (ingested once, then read from the on-disk cache).

Deployment: node config ``data-path`` (the site folder), ``cache-path`` (default ``<data-path>/../.nasofl-cache/
<site>``), ``eval-only`` (bool), optional ``site-name``, ``pseudonym-salt`` (default: the site's own random salt
in ``<cache-path>/pseudonym-salt``, see :func:`shared.pseudonym.site_salt`) and ``privacy-budget-epsilon`` (the
site's total epsilon over every study under local DP, unit: one patient; see PRIVACY.md); in both modes optional
``max-hist-bins`` (default 100) and ``min-hist-count`` (default 2): the evaluation histograms this site answers
with (``shared.metrics.coarse_histograms``), and ``pretraining`` (:data:`PRETRAINING_CHOICES`, default ``all``): which
of its patients a contrastive pretraining round may learn from, or that the site refuses such rounds.
Simulation: node config is only ``partition-id`` / ``num-partitions``, so run config ``sim-data-root`` plus the
partition id picks the i-th site folder in sorted order (folders starting with ``_`` or ``.`` are not sites);
the cache goes to run config ``sim-cache-root`` (default ``<sim-data-root>/_cache``).
Every message may start a fresh process: nothing here relies on module globals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import protocol as P
from shared.data.patient import PatientVolumes
from shared.errors import ConfigError, SiteDataError
from shared.pseudonym import site_salt

log = logging.getLogger(__name__)


#: node-config defaults of the evaluation histograms a site answers with (shared.metrics.coarse_histograms)
DEFAULT_MAX_HIST_BINS = 100
DEFAULT_MIN_HIST_COUNT = 2


def _as_int(node_config: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = node_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"node config {key}={value!r}: expected an integer in [{lo}, {hi}]")
    return value


def histogram_limits(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """(``max-hist-bins``, ``min-hist-count``) of this site's node config (defaults 100 and 2)."""
    return (
        _as_int(node_config, "max-hist-bins", DEFAULT_MAX_HIST_BINS, 1, 1_000_000),
        _as_int(node_config, "min-hist-count", DEFAULT_MIN_HIST_COUNT, 1, 1_000),
    )


#: node config ``pretraining``: the site's own say over contrastive pretraining rounds (``stage = "cls-pretrain"``),
#: whatever the study's run config asks. ``all``: training patients and patients without a diagnosis (the default);
#: ``diagnosed``: training patients with a diagnosis only; ``refuse``: every pretraining round is refused unread.
#: The site announces it in its ``query.info`` reply (``shared.protocol.INFO_PRETRAINING``).
PRETRAINING_CHOICES = P.PRETRAINING_CHOICES


def pretraining_consent(node_config: Mapping[str, Any]) -> str:
    """Node config ``pretraining`` (default ``all``), one of :data:`PRETRAINING_CHOICES`."""
    value = node_config.get("pretraining", P.PRETRAINING_ALL)
    if value not in PRETRAINING_CHOICES:
        raise ConfigError(
            f"node config pretraining={value!r}: expected one of {', '.join(PRETRAINING_CHOICES)} (all: training "
            "patients and patients without a diagnosis; diagnosed: training patients only; refuse: no pretraining "
            "round runs at this site)"
        )
    return str(value)


@dataclass(frozen=True)
class NodeSite:
    name: str
    data_dir: Path
    cache_dir: Path
    eval_only: bool
    salt: str | None = None
    simulated: bool = False
    max_hist_bins: int = DEFAULT_MAX_HIST_BINS
    min_hist_count: int = DEFAULT_MIN_HIST_COUNT
    privacy_budget: float | None = (
        None  # node config privacy-budget-epsilon (unit: one patient); None: no cap
    )
    pretraining: str = "all"  # node config pretraining (PRETRAINING_CHOICES)


def default_cache_dir(data_dir: Path, site_name: str) -> Path:
    """A deployed site's cache folder when none is given: ``<data_dir>/../.nasofl-cache/<site_name>``."""
    return data_dir.parent / ".nasofl-cache" / site_name


def privacy_budget(node_config: Mapping[str, Any]) -> float | None:
    """Node config ``privacy-budget-epsilon``: the site's total epsilon over all studies (absent: no cap)."""
    raw = node_config.get("privacy-budget-epsilon")
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value != value:
        raise ConfigError(
            f"node config privacy-budget-epsilon={raw!r}: expected a number > 0 (the site's total epsilon "
            "over every study, unit: one patient)"
        )
    return value


def site_folders(root: Path) -> list[Path]:
    """Sorted site folders under a simulation data root (``_truth``, ``_cache``, hidden folders excluded)."""
    if not root.is_dir():
        raise ConfigError(f"sim-data-root={str(root)!r} is not a folder: run `nasofl-sim synth DIR` first")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"node config {key}={value!r}: expected true or false")


def resolve_site(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> NodeSite:
    """The node's site folder, cache folder and role (train / eval-only)."""
    eval_only_names = {s.strip() for s in str(run_config.get("eval-only-sites", "")).split(",") if s.strip()}
    if "data-path" in node_config:
        data_dir = Path(str(node_config["data-path"]))
        if not data_dir.is_dir():
            raise ConfigError(f"node config data-path={str(data_dir)!r} is not a folder")
        name = str(node_config.get("site-name", data_dir.name))
        cache = Path(str(node_config.get("cache-path", default_cache_dir(data_dir, name))))
        eval_only = _as_bool("eval-only", node_config.get("eval-only", False)) or name in eval_only_names
        salt = node_config.get("pseudonym-salt")
        max_bins, min_count = histogram_limits(node_config)
        return NodeSite(
            name,
            data_dir,
            cache,
            eval_only,
            str(salt) if salt else site_salt(cache),
            max_hist_bins=max_bins,
            min_hist_count=min_count,
            privacy_budget=privacy_budget(node_config),
            pretraining=pretraining_consent(node_config),
        )
    if "partition-id" in node_config:
        root = str(run_config.get("sim-data-root", ""))
        if not root:
            raise ConfigError(
                "run config sim-data-root is empty: a simulated node needs the synthetic hospitals' folder"
            )
        folders = site_folders(Path(root))
        pid = int(node_config["partition-id"])
        if pid >= len(folders):
            raise ConfigError(
                f"partition-id {pid} has no site: sim-data-root={root!r} holds {len(folders)} site folders; "
                "set num-supernodes to at most that number"
            )
        data_dir = folders[pid]
        cache_root = str(run_config.get("sim-cache-root", "")) or str(Path(root) / "_cache")
        max_bins, min_count = histogram_limits(node_config)
        return NodeSite(
            data_dir.name,
            data_dir,
            Path(cache_root) / data_dir.name,
            data_dir.name in eval_only_names,
            simulated=True,
            max_hist_bins=max_bins,
            min_hist_count=min_count,
            privacy_budget=privacy_budget(node_config),
            pretraining=pretraining_consent(node_config),
        )
    raise ConfigError(
        "node config has neither data-path nor partition-id: start the SuperNode with "
        "--node-config 'data-path=\"/path/to/site\"'"
    )


@dataclass
class SiteData:
    site: NodeSite
    patients: list[PatientVolumes]
    report: Any  # shared.data.report.ValidationReport (stays on site)


#: Per-process memo (an optimisation only: Ray simulation reuses its actor processes between messages;
#: in deployment each message is a fresh process and reads the on-disk cache). Keyed by folder + labels mtime.
_MEMO: dict[tuple[str, str, str, float], SiteData] = {}


def load_site_data(site: NodeSite) -> SiteData:
    """Ingest (first call) or read from the cache (later calls) the site's patients."""
    labels = site.data_dir / "labels.csv"
    key = (
        str(site.data_dir),
        str(site.cache_dir),
        site.salt or "",
        labels.stat().st_mtime if labels.exists() else 0.0,
    )
    if key in _MEMO:
        return SiteData(site, _MEMO[key].patients, _MEMO[key].report)
    data = _load_site_data(site)
    if len(_MEMO) >= 16:  # a simulation actor serves several sites; keep memory bounded
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = data
    return data


def _load_site_data(site: NodeSite) -> SiteData:
    from shared.data.site import load_site

    site.cache_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"cache_dir": site.cache_dir / "ingest"}
    if site.salt:
        kwargs["salt"] = site.salt
    cohort = load_site(site.data_dir, **kwargs)
    if not cohort.patients:
        raise SiteDataError(
            f"site {site.name}: no usable patient after ingestion; run `nasofl-site validate` here"
        )
    return SiteData(site, list(cohort.patients), cohort.report)


def split_patients(patients: list[PatientVolumes], split: str, eval_only: bool) -> list[PatientVolumes]:
    """Patients of ``split``; an evaluation-only site evaluates all its patients on the "test" split."""
    if eval_only and split == "test":
        return list(patients)
    return [p for p in patients if p.split == split]
