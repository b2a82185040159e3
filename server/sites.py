"""What the coordinator knows about each site (counts only, never a patient id) and why a site sits out."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared import protocol as P
from shared.config import parse_dataset_name


@dataclass
class SiteInfo:
    node_id: int
    name: str
    role: str  # "train" | "eval-only"
    counts: dict[str, float] = field(default_factory=dict)
    roi: dict[str, float] = field(default_factory=dict)


def skip_reason(site: SiteInfo, stage: str, dataset: str) -> str:
    """Why a training site has no data for a stage or dataset, from its counts (never a patient id)."""
    if stage == "seg":
        return "no patient with a tumour mask"
    if not site.roi:
        return "no ROI counts: query.roi failed at this site (see its site-failed line)"
    sequences = " and ".join(parse_dataset_name(dataset))
    missing = int(site.roi.get(P.roi_metric_key(dataset, "missing-sequence"), 0))
    empty = int(site.roi.get(P.roi_metric_key(dataset, "empty-prediction"), 0))
    labelled = int(site.counts.get("patients-npc", 0) + site.counts.get("patients-npl", 0))
    if missing and missing >= labelled:
        return f"no patient with {sequences}"
    return (
        f"no training patient with a {dataset} ROI ({missing} patient(s) without {sequences}, "
        f"{empty} with an empty predicted mask)"
    )
