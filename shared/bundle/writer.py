"""Write a model bundle: the kept segmenter and classifiers with every setting they need, a model card and a
manifest of SHA-256 hashes. Written at the end of a federated study (``server.report``) and of
``nasofl-sim centralized``; read by ``nasofl-site predict`` (:mod:`shared.bundle.loader`).

Layout (format version :data:`~shared.bundle.manifest.FORMAT_VERSION`)::

    BUNDLE/manifest.json       format, version, code version, settings fingerprint, SHA-256 of every file
    BUNDLE/settings.json       pipeline settings (flat keys), ingestion settings and version, preprocessing
    BUNDLE/card.json           training data, per-model validation operating point and test AUC, recommendation
    BUNDLE/MODEL_CARD.md       the same card for people
    BUNDLE/segmenter.pt        torch state dict (tensors only; loaded with ``weights_only=True``)
    BUNDLE/classifier_<ds>.pt  one per classifier (``t1+t2`` -> ``classifier_t1_t2.pt``)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.bundle.manifest import settings_fingerprint, write_manifest
from shared.config import PipelineConfig
from shared.data.settings import INGEST_VERSION, IngestSettings
from shared.model_files import save_state_file
from shared.reporting.table import dataset_label

PREPROCESSING: dict[str, str] = {
    "grid": "every sequence resampled (linear) onto the reference sequence's grid (ingest.reference_sequence, "
    "fallback order t2, t1, t1ce)",
    "normalisation": "per-volume z-score over the body (voxels above 5% of the 1st-99th percentile range)",
    "segmenter_input": "axial slices of seg-in-sequences, resized (bilinear) to seg-image-size; tumour = logit > 0",
    "roi": "largest 3-D component(s) of the predicted mask; cls-slices-per-patient largest slices; square box "
    "around the mask plus roi-margin pixels; resized to cls-image-size",
    "roi_intensity": "roi-intensity: body (the z-score above), peritumoral (each crop minus the median around the "
    "tumour), reference (the ratio to the most frequent tissue within 3-40 mm of the tumour, minus 1) or log-reference "
    "(the log of that ratio, clipped to +-log 10)",
    "roi_context": "roi-context: tumour (pixels outside the predicted tumour set to 0) or box (the whole box)",
    "patient_score": "cls-aggregation of the slice probabilities of NPL (cls-tta = flip: each slice's probability "
    "is the mean over its four flips)",
    "decision": "NPL when the patient score >= the classifier's validation threshold (Youden)",
}


def model_file(dataset: str) -> str:
    return "segmenter.pt" if dataset == "segmenter" else f"classifier_{dataset.replace('+', '_')}.pt"


@dataclass
class ClassifierExport:
    """One kept classifier. ``validation``: an AUC entry on the validation patients (value, ci, n_npc, n_npl,
    threshold, sensitivity, specificity: :func:`shared.reporting.results.auc_entry`) or None when the validation
    split lacked a class; ``test``: the same on the test patients, or None."""

    dataset: str
    state: Mapping[str, Any]
    validation: Mapping[str, Any] | None
    test: Mapping[str, Any] | None


@dataclass
class TrainingSummary:
    """Who trained the models. ``sites``: dicts with name, role, patients, npc, npl (counts only)."""

    mode: str  # "federated" | "centralized"
    sites: Sequence[Mapping[str, Any]]
    weights_origin: str
    segmenter_test_dice: float | None
    dp: Mapping[str, Any] = field(default_factory=lambda: {"enabled": False})
    details: Mapping[str, Any] = field(default_factory=dict)


def code_version() -> str:
    try:
        version = metadata.version("nasofl")
    except metadata.PackageNotFoundError:
        version = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "no git checkout"
    return f"nasofl {version} ({commit})"


def bundle_settings(cfg: PipelineConfig, ingest: IngestSettings) -> dict[str, Any]:
    return {
        "pipeline": cfg.to_mapping(),
        "ingest": {**json.loads(json.dumps(asdict(ingest))), "version": INGEST_VERSION},
        "preprocessing": dict(PREPROCESSING),
    }


def recommend(classifiers: Sequence[ClassifierExport]) -> tuple[str | None, str]:
    """The classifier with the best validated AUC (first in order on ties) and the reason, in words."""
    rated = [
        (c.dataset, c.validation["value"])
        for c in classifiers
        if c.validation and c.validation.get("value") is not None
    ]
    if not rated:
        return None, "no classifier has a validated AUC (validation split lacked a class)"
    best, value = max(rated, key=lambda r: r[1])
    others = ", ".join(f"{dataset_label(d)} {v:.3f}" for d, v in rated if d != best)
    return best, f"best validated AUC: {dataset_label(best)} {value:.3f}" + (
        f" (others: {others})" if others else ""
    )


def _tensor_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {
        k: (v.detach().to("cpu").clone() if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)))
        for k, v in state.items()
    }


def write_bundle(
    out: Path,
    cfg: PipelineConfig,
    ingest: IngestSettings,
    segmenter_state: Mapping[str, Any],
    classifiers: Sequence[ClassifierExport],
    training: TrainingSummary,
) -> Path:
    """Write the bundle folder ``out`` (replaced if it exists) and return it."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    settings = bundle_settings(cfg, ingest)
    (out / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    save_state_file(out / model_file("segmenter"), _tensor_state(segmenter_state))
    models: dict[str, Any] = {}
    for c in classifiers:
        save_state_file(out / model_file(c.dataset), _tensor_state(c.state))
        models[c.dataset] = {
            "file": model_file(c.dataset),
            "label": dataset_label(c.dataset),
            "sequences": list(cfg.dataset_sequences(c.dataset)),
            "validation": dict(c.validation) if c.validation else None,
            "test": dict(c.test) if c.test else None,
        }
    best, reason = recommend(classifiers)
    card = {
        "created": created,
        "code_version": code_version(),
        "settings_fingerprint": settings_fingerprint(settings),
        "mode": training.mode,
        "sites": [dict(s) for s in training.sites],
        "weights_origin": training.weights_origin,
        "dp": dict(training.dp),
        "segmenter": {
            "file": model_file("segmenter"),
            "architecture": f"U-Net ({cfg.seg.encoder} encoder)",
            "sequences": list(cfg.seg.in_sequences),
            "test_dice": training.segmenter_test_dice,
        },
        "classifier_architecture": cfg.cls.architecture,
        "classifiers": models,
        "recommended": best,
        "recommended_reason": reason,
        "details": json.loads(json.dumps(dict(training.details), default=str)),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(card_markdown(card))
    write_manifest(out, card["settings_fingerprint"], card["code_version"], created)
    return out


def _auc_text(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    lo, hi = entry["ci"]
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}] (n={entry['n_patients']}: {entry['n_npc']} NPC, {entry['n_npl']} NPL)"


def dp_text(dp: Mapping[str, Any]) -> str:
    if not dp.get("enabled"):
        return "off (no differential privacy)"
    return f"epsilon {dp.get('epsilon')} ({dp.get('unit', 'unit not stated')}), delta {dp.get('delta')}"


def card_markdown(card: Mapping[str, Any]) -> str:
    n_pat = sum(int(s.get("patients", 0)) for s in card["sites"])
    lines = [
        "# nasofl model bundle: model card",
        "",
        f"Written {card['created']} by {card['code_version']}; settings fingerprint "
        f"`{card['settings_fingerprint'][:16]}`. Decision support for research use, not a diagnosis and not a "
        "medical device.",
        "",
        "## Models",
        "",
        f"- segmenter: {card['segmenter']['architecture']} on {'+'.join(card['segmenter']['sequences'])}, test Dice "
        f"{card['segmenter']['test_dice'] if card['segmenter']['test_dice'] is None else round(card['segmenter']['test_dice'], 3)}",
        f"- classifiers: {card['classifier_architecture']}, weights origin {card['weights_origin']}",
        f"- differential privacy: {dp_text(card['dp'])}",
        f"- recommended: {card['recommended'] and dataset_label(card['recommended'])} ({card['recommended_reason']})",
        "",
        "| model | validation AUC [95% CI] | threshold | sens / spec (validation) | test AUC [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for m in card["classifiers"].values():
        v = m["validation"] or {}
        op = f"{v['sensitivity']:.2f} / {v['specificity']:.2f}" if v.get("sensitivity") is not None else "n/a"
        thr = f"{v['threshold']:.3f}" if v.get("threshold") is not None else "n/a"
        lines.append(f"| {m['label']} | {_auc_text(v)} | {thr} | {op} | {_auc_text(m['test'])} |")
    lines += ["", f"## Training data ({card['mode']}, {n_pat} patients)", ""]
    for s in card["sites"]:
        lines.append(
            f"- {s['name']}: {s.get('patients')} patients ({s.get('npc', '?')} NPC, {s.get('npl', '?')} NPL), "
            f"{s.get('role', 'train')}"
        )
    return "\n".join(lines) + "\n"
