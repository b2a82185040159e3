"""A federated study's kept models scored with the centralized baseline's instrument: exact AUC on raw scores.

The federation reads its test AUC from score histograms pooled over the sites: each site's ranges are merged
until none holds fewer than ``min-hist-count`` patients, and a pair of patients in overlapping ranges counts 1/2
(the report's ``auc-binning-bound`` says how far that can move the AUC). The centralized baseline scores its
patients exactly. So "federated / centralized" compares two models AND two instruments.

In a simulation every site's patients are on this machine, so the federated study's bundle (the kept segmenter
and classifiers, verified by :func:`shared.bundle.load_bundle`) can be scored exactly on the same pooled test
patients, through the same steps as the centralized run: predicted masks, ROI crops, patient scores, exact AUC
with DeLong CI. Nothing of this exists at a real deployment, where no machine holds every site's patients.

With FedBN the sites keep their normalisation layers, so the coordinator holds no single model that the sites
scored with: :func:`exact_scores_refusal` says so and nothing is scored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.bundle import load_bundle
from shared.data.patient import PatientVolumes
from shared.reporting.results import auc_entry
from shared.roi.datasets import build_roi_datasets
from shared.training.classification import patient_scores
from shared.training.segmentation import predict_masks

log = logging.getLogger(__name__)

SOURCE = "federated study's bundle, scored exactly on the pooled test patients (simulation only)"


def exact_scores_refusal(fedbn: bool, study_state: str) -> str | None:
    """Why the federated models cannot be scored exactly (None when they can)."""
    if study_state != "COMPLETED":
        return f"the federated study ended {study_state}: it left no kept models to score"
    if fedbn:
        return (
            "fedbn = true: each site scored with its own normalisation layers, which never reach the "
            "coordinator, so no single model reproduces the sites' scores"
        )
    return None


def score_study_bundle(
    bundle_dir: Path, patients: Sequence[PatientVolumes], device: torch.device, progress: bool = False
) -> dict[str, Any]:
    """Exact test AUC of each classifier in the bundle, on ``patients``' test split (results.json shape:
    ``auc`` per dataset; ``dice`` None, because the federation's Dice is already pooled from exact sums)."""
    bundle = load_bundle(Path(bundle_dir))
    cfg = bundle.cfg
    labelled = [p for p in patients if p.label is not None]
    masks = predict_masks(bundle.segmenter, labelled, cfg, device, progress=progress)
    datasets, _report = build_roi_datasets(masks, labelled, tuple(bundle.classifiers), cfg)
    auc: dict[str, Any] = {}
    for name, model in bundle.classifiers.items():
        test = datasets[name].subset("test")
        scores, labels = patient_scores(model, test, cfg, device)
        if 0 < int(labels.sum()) < len(labels):
            auc[name] = auc_entry(scores, labels)
        else:
            log.warning("dataset %s: test split lacks one class (%s patients): no exact AUC", name, len(labels))
    return {"dice": None, "auc": auc, "wall_seconds": None, "mode": "federated (exact scores)", "source": SOURCE}
