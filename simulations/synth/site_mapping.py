"""``site_mapping.json``: a site's local naming rules, read by ingestion (see the package docstring)."""

from __future__ import annotations

import json
from pathlib import Path

from simulations.synth.dicom_series import LOCAL_CODES
from simulations.synth.site_profile import SiteProfile


def site_mapping(profile: SiteProfile) -> dict:
    """The mapping for ``profile``: its local series codes and its primary ROI name."""
    series = {f"^{LOCAL_CODES[kind]}$": kind for kind in ("t1", "t2", "t1ce")}
    series.update({f"^{LOCAL_CODES['loc']}$": "ignore", f"^{LOCAL_CODES['dwi']}$": "ignore"})
    return {"series": series, "roi_names": [f"^{profile.roi_name}$"]}


def write_site_mapping(path: Path, profile: SiteProfile) -> None:
    Path(path).write_text(json.dumps(site_mapping(profile), indent=2) + "\n")
