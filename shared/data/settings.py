"""IngestSettings: how a site folder becomes PatientVolumes (frozen, validated, hashable for the cache)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from shared.data.patient import SEQUENCES
from shared.errors import ConfigError

#: Primary nasopharyngeal tumour ROI names (case-insensitive): GTVnx, GTV-NX, GTVnx_MR, GTVp, GTV_P, GTVp_7000.
#: Nodal ROIs (GTVnd, GTVn, GTVrpn, GTVln) must NOT match.
DEFAULT_ROI_PATTERNS: tuple[str, ...] = (r"^gtv[\s_\-]*(nx|p)\d*([\s_\-.].*)?$",)

#: Bumped whenever ingestion output changes for the same input, so old caches are ignored.
INGEST_VERSION = 5


@dataclass(frozen=True)
class IngestSettings:
    """Settings of DICOM ingestion.

    Attributes:
        roi_patterns: regexes (case-insensitive, ``re.search``) naming the primary tumour ROI / segment.
        split_fractions: train/val/test fractions, each in [0, 1], summing to 1.
        split_seed: seed of the patient-level split.
        reference_sequence: every sequence of a study is resampled onto this series' grid
            (fallback order t2, t1, t1ce when the patient lacks it).
        min_slices: a series with fewer slices is not a volume (localisers, single projections).
        t1_max_tr_ms, t1_max_te_ms, t2_min_tr_ms, t2_min_te_ms, gre_t1_max_tr_ms: TR/TE weighting rules.
        gap_factor: a step between slices above ``gap_factor`` x the median spacing is a gap.
    """

    roi_patterns: tuple[str, ...] = DEFAULT_ROI_PATTERNS
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    reference_sequence: str = "t2"
    min_slices: int = 3
    t1_max_tr_ms: float = 1000.0
    t1_max_te_ms: float = 30.0
    t2_min_tr_ms: float = 2000.0
    t2_min_te_ms: float = 60.0
    gre_t1_max_tr_ms: float = 20.0
    gap_factor: float = 1.5

    def __post_init__(self) -> None:
        if not self.roi_patterns:
            raise ConfigError("roi_patterns: found an empty tuple; expected at least one regex")
        for pat in self.roi_patterns:
            try:
                re.compile(pat)
            except re.error as err:
                raise ConfigError(f"roi_patterns: {pat!r} is not a valid regex ({err})") from None
        fr = self.split_fractions
        if len(fr) != 3 or any(not 0.0 <= f <= 1.0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ConfigError(
                f"split_fractions: found {fr!r}; expected three fractions in [0, 1] (train, val, test) summing to 1"
            )
        if self.reference_sequence not in SEQUENCES:
            raise ConfigError(
                f"reference_sequence: found {self.reference_sequence!r}; expected one of {SEQUENCES}"
            )
        if self.min_slices < 1:
            raise ConfigError(f"min_slices: found {self.min_slices}; expected >= 1")
        if self.gap_factor <= 1.0:
            raise ConfigError(f"gap_factor: found {self.gap_factor}; expected > 1.0")

    def cache_key(self) -> str:
        """Hash of every setting that changes ingested arrays (split settings excluded: the split is
        recomputed on every load and never cached)."""
        d = asdict(self)
        d.pop("split_fractions")
        d.pop("split_seed")
        d["_version"] = INGEST_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def reference_order(self) -> tuple[str, ...]:
        rest = tuple(s for s in ("t2", "t1", "t1ce") if s != self.reference_sequence)
        return (self.reference_sequence, *rest)
