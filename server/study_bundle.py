"""The model bundle of a finished federated study (``nasofl-site predict`` loads it): kept arrays as the models
hold them, settings, validation operating points (pooled validation histograms of the training sites), who trained
it and the DP epsilon with its unit. The bundle format itself is ``shared.bundle``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.config import FederationConfig
from server.outcome import StudyOutcome
from server.pooled_eval import auc_entry
from shared import protocol as P
from shared.config import PipelineConfig
from shared.models import weights_origin


def bundle_dp(privacy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The bundle's DP entry from ``server.privacy.privacy_summary``: the epsilon with its unit (local DP: the
    largest this study spent at any site, unit one patient; central DP: the study's, unit one site)."""
    if not privacy or privacy.get("mode") in (None, "off"):
        return {"enabled": False}
    if privacy["mode"] == "central":
        return {
            "enabled": True,
            "mode": "central",
            "epsilon": privacy.get("epsilon"),
            "delta": privacy.get("delta"),
            "unit": privacy.get("unit"),
        }
    sites = privacy.get("sites") or {}
    spent = [v["epsilon_study"] for v in sites.values() if v.get("epsilon_study") is not None]
    deltas = [v["delta"] for v in sites.values() if v.get("delta") is not None]
    return {
        "enabled": True,
        "mode": "local",
        "epsilon": max(spent) if spent else None,
        "delta": max(deltas) if deltas else None,
        "unit": privacy.get("unit"),
        "per_site": {name: v.get("epsilon_study") for name, v in sites.items()},
    }


def write_study_bundle(
    study: StudyOutcome,
    cfg: PipelineConfig,
    fed: FederationConfig,
    results: Mapping[str, Any],
    out: Path,
    privacy: Mapping[str, Any] | None = None,
) -> Path:
    """The versioned model bundle for ``nasofl-site predict``: kept arrays, settings, validation operating
    points (pooled validation histograms of the training sites), model card. Sites ingest with default
    ingestion settings (node config has no ingestion keys)."""
    from dataclasses import replace

    from shared.bundle import ClassifierExport, TrainingSummary, write_bundle
    from shared.data.settings import IngestSettings
    from shared.models import build_classifier, build_segmenter
    from shared.records import numpy_to_record, record_to_state

    def as_state(arrays: Mapping[str, np.ndarray], model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Arrays as the model holds them (Flower stores 0-d buffers as shape (1,)); checks keys and shapes."""
        return dict(record_to_state(numpy_to_record(arrays), model.state_dict()))

    cls_cfg = replace(cfg.cls, weights="random")  # only shapes matter here
    exports = []
    for ds, arrays in study.classifiers.items():
        state = as_state(arrays, build_classifier(cls_cfg, len(cfg.dataset_sequences(ds)), dp=cfg.dp_models))
        val = study.classifier_val.get(ds)
        entry = None
        if val is not None:
            entry = auc_entry(val.train_sums())
            entry = entry if entry.get("value") is not None else None
        exports.append(ClassifierExport(ds, state, entry, results["auc"].get(ds)))
    sites = [
        {
            "name": info.name,
            "role": info.role,
            "patients": int(info.counts.get(P.PATIENTS, 0)),
            "npc": int(info.counts.get(P.PATIENTS_NPC, 0)),
            "npl": int(info.counts.get(P.PATIENTS_NPL, 0)),
        }
        for info in sorted(study.sites.values(), key=lambda s: s.name)
    ]
    training = TrainingSummary(
        mode="federated",
        sites=sites,
        weights_origin=weights_origin(cfg.cls),
        segmenter_test_dice=results.get("dice"),
        dp=bundle_dp(privacy),
        details={
            k: fed.to_mapping()[k] for k in ("strategy", "fedbn", "seg-rounds", "cls-rounds", "min-sites")
        },
    )
    seg_state = as_state(study.segmenter, build_segmenter(cfg.seg, dp=cfg.dp_models))
    return write_bundle(out, cfg, IngestSettings(), seg_state, exports, training)
