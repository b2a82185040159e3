"""Classifier recipe screening: which settings make the classifier learn the cohort's signal.

Per cohort (a synthetic cohort folder with ``_truth``) and per variant (a set of pipeline-key changes), k-fold
cross-validation over the train+val patients: ROIs from the TRUE contours (the classifier's own problem, without the
segmenter's errors), one model per fold, AUC of the pooled out-of-fold patient scores. Test patients are never
loaded, so choosing a recipe here leaves the test split untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.app_config import ConfigValue
from shared.config import PipelineConfig
from shared.data.patient import PatientVolumes
from shared.data.split import patient_split
from shared.errors import SiteDataError
from shared.metrics.auc import auc
from shared.models.classifier import build_classifier
from shared.roi.datasets import build_roi_datasets
from shared.training.classification import patient_scores, train_classifier
from shared.training.pretrain import pretrain_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CvResult:
    cohort: str
    variant: str
    dataset: str
    auc: float
    fold_aucs: tuple[float, ...]
    seconds: float


def truth_patients(cohort: Path) -> list[PatientVolumes]:
    """Train+val patients of a synthetic cohort from ``cohort/_truth`` (true masks; the sites' own split rule)."""
    truth = cohort / "_truth"
    sites = sorted(p for p in truth.iterdir() if p.is_dir()) if truth.is_dir() else []
    if not sites:
        raise SiteDataError(f"{truth} has no site folders: expected a cohort written by `nasofl-sim synth`")
    out: list[PatientVolumes] = []
    for site in sites:
        arrays = [np.load(f) for f in sorted(site.glob("*.npz"))]
        split = patient_split({str(a["patient_id"]): int(a["label"]) for a in arrays})
        for a in arrays:
            pid = str(a["patient_id"])
            if split[pid] == "test":
                continue
            out.append(
                PatientVolumes(
                    pseudonym=f"{site.name}/{pid}",
                    label=int(a["label"]),
                    images={str(s): a[f"{s}_image"] for s in a["sequences"]},
                    mask=a["truth_mask"],
                    spacing_mm=tuple(float(v) for v in a[f"{a['sequences'][0]}_spacing"]),
                    split=split[pid],
                )
            )
    return out


def stratified_folds(patients: list[PatientVolumes], k: int, seed: int) -> dict[str, int]:
    """pseudonym -> fold in ``0..k-1``, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold: dict[str, int] = {}
    for label in (0, 1):
        ids = [p.pseudonym for p in patients if p.label == label]
        rng.shuffle(ids)
        fold.update({pid: j % k for j, pid in enumerate(ids)})
    return fold


def cross_validate(
    cohort: Path,
    variant: str,
    changes: Mapping[str, ConfigValue],
    base: Mapping[str, ConfigValue],
    folds: int,
) -> list[CvResult]:
    """One :class:`CvResult` per dataset of the variant's config on ``cohort``."""
    cfg = PipelineConfig.defaults({**base, **changes})
    patients = truth_patients(cohort)
    fold = stratified_folds(patients, folds, cfg.seed)
    datasets, _ = build_roi_datasets({p.pseudonym: p.mask for p in patients}, patients, cfg.datasets, cfg)
    device = torch.device("cpu")
    results: list[CvResult] = []
    for name, ds in datasets.items():
        t0 = time.perf_counter()
        scores, labels, per_fold = [], [], []
        for f in range(folds):
            ds.split = tuple("val" if fold[pid] == f else "train" for pid in ds.patients)
            torch.manual_seed(cfg.seed + f)
            model = build_classifier(cfg.cls, ds.in_channels)
            if cfg.cls.pretrain_epochs > 0:
                pretrain_backbone(model, ds.subset("train"), cfg, device, cfg.cls.pretrain_epochs)
            train_classifier(model, ds.subset("train"), cfg, device, cfg.cls_epochs)
            s, y = patient_scores(model, ds.subset("val"), cfg, device)
            scores.append(s)
            labels.append(y)
            per_fold.append(auc(s, y))
            log.info("%s %s %s fold %s/%s: AUC %.3f", cohort.name, variant, name, f + 1, folds, per_fold[-1])
        pooled = auc(np.concatenate(scores), np.concatenate(labels))
        results.append(
            CvResult(cohort.name, variant, name, pooled, tuple(per_fold), time.perf_counter() - t0)
        )
    return results


def format_table(results: list[CvResult]) -> str:
    """Rows variant x dataset: CV AUC per cohort, then mean and SD over cohorts, and seconds per cohort."""
    cohorts = sorted({r.cohort for r in results})
    lines = [f"{'variant':<24} {'dataset':<8} " + " ".join(f"{c[-12:]:>12}" for c in cohorts)
             + f" {'mean':>6} {'sd':>6} {'s/cohort':>9}"]  # fmt: skip
    keys = dict.fromkeys((r.variant, r.dataset) for r in results)
    for variant, dataset in keys:
        rows = {r.cohort: r for r in results if r.variant == variant and r.dataset == dataset}
        values = np.array([rows[c].auc for c in cohorts if c in rows])
        cells = " ".join(f"{rows[c].auc:>12.3f}" if c in rows else f"{'':>12}" for c in cohorts)
        seconds = np.mean([r.seconds for r in rows.values()])
        lines.append(
            f"{variant:<24} {dataset:<8} {cells} {values.mean():>6.3f} {values.std():>6.3f} {seconds:>9.0f}"
        )
    return "\n".join(lines)
