"""Optional ``site_mapping.json``: a site's own rules, overriding the header-based ones.

Format::

    {"series": {"<SeriesDescription regex>": "t1|t2|t1ce|ignore", ...},
     "roi_names": ["<ROI name regex>", ...]}

Series regexes are matched case-insensitively (``re.search``) against SeriesDescription, then
ProtocolName; the first matching entry (file order) wins. ``roi_names`` replaces the default ROI regexes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import SiteDataError

MAPPING_FILE = "site_mapping.json"
ALLOWED = ("t1", "t2", "t1ce", "ignore")


@dataclass(frozen=True)
class SiteMapping:
    series: tuple[tuple[str, str], ...] = ()
    roi_names: tuple[str, ...] = ()
    source_hash: str = ""
    _compiled: tuple = field(default=(), compare=False, repr=False)

    def classify(self, *texts: str) -> tuple[str, str] | None:
        """(sequence or 'ignore', matching regex) for the first rule matching any text, else None."""
        for (pattern, target), rx in zip(self.series, self._compiled, strict=True):
            if any(t and rx.search(t) for t in texts):
                return target, pattern
        return None


def load_mapping(site_dir: Path) -> SiteMapping:
    """Read ``site_dir/site_mapping.json`` if present (empty mapping otherwise).

    Raises:
        SiteDataError: invalid JSON, unknown keys, bad regex or target (message names the file and key).
    """
    path = site_dir / MAPPING_FILE
    if not path.exists():
        return SiteMapping()
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SiteDataError(
            f'{MAPPING_FILE}: not valid JSON ({err}); expected {{"series": {{...}}, "roi_names": [...]}}'
        ) from None
    if not isinstance(data, dict):
        raise SiteDataError(f"{MAPPING_FILE}: found a {type(data).__name__}; expected a JSON object")
    unknown = set(data) - {"series", "roi_names"}
    if unknown:
        raise SiteDataError(
            f"{MAPPING_FILE}: unknown key(s) {sorted(unknown)}; allowed: 'series', 'roi_names'"
        )
    series = data.get("series", {}) or {}
    if not isinstance(series, dict):
        raise SiteDataError(f"{MAPPING_FILE}: 'series' must be an object regex -> one of {ALLOWED}")
    rules, compiled = [], []
    for pattern, target in series.items():
        t = str(target).strip().lower()
        if t not in ALLOWED:
            raise SiteDataError(
                f"{MAPPING_FILE}: series[{pattern!r}] = {target!r}; expected one of {ALLOWED}"
            )
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as err:
            raise SiteDataError(f"{MAPPING_FILE}: series regex {pattern!r} is invalid ({err})") from None
        rules.append((pattern, t))
    rois = data.get("roi_names", []) or []
    if not isinstance(rois, list) or not all(isinstance(r, str) for r in rois):
        raise SiteDataError(f"{MAPPING_FILE}: 'roi_names' must be a list of regex strings")
    for r in rois:
        try:
            re.compile(r)
        except re.error as err:
            raise SiteDataError(f"{MAPPING_FILE}: roi_names regex {r!r} is invalid ({err})") from None
    import hashlib

    return SiteMapping(tuple(rules), tuple(rois), hashlib.sha256(raw).hexdigest()[:16], tuple(compiled))
