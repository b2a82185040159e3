"""Stage 2 at a site: ROI datasets from the final global segmenter, classifier training and evaluation.

Replies hold counts, losses, seconds and per-class histograms of patient scores at most ``max-hist-bins`` fine,
with no score range holding fewer than ``min-hist-count`` patients (node config;
``shared.metrics.coarse_histograms``), never a patient's score, label or pseudonym.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from client.local_model import load_global, overlay_local_norm, save_local_norm, seeded_config
from client.local_optimizer import load_optimizer_state, state_keeper
from client.node_data import SiteData
from client.roi_cache import has_roi, load_roi, requested_roi, roi_key, roi_report, save_roi
from client.train_reply import round_figures, untrained_round
from shared import protocol as P
from shared.config import PipelineConfig, parse_dataset_name
from shared.errors import ConfigError
from shared.metrics.coarse_histograms import fixed_histograms, merge_small_groups
from shared.models import build_classifier, build_segmenter
from shared.records import state_to_numpy
from shared.roi.datasets import UNLABELLED_SPLIT, build_roi_datasets
from shared.secure_sums import SECURE_HIST_BINS, secure_hist_bins
from shared.training.classification import patient_scores, train_classifier
from shared.training.segmentation import predict_masks

log = logging.getLogger(__name__)


def query_roi(
    record: Any, conf: Mapping[str, Any], data: SiteData, cfg: PipelineConfig, device: torch.device
) -> dict[str, int | float]:
    """Predict masks with the final segmenter, build and cache the ROI datasets -> per-dataset counts."""
    key = roi_key(str(conf[P.CFG_SEGMENTER_HASH]), cfg)
    if not has_roi(data.site.cache_dir, key, cfg.datasets):
        model = build_segmenter(cfg.seg, dp=cfg.dp_models)
        load_global(model, record)
        masks = predict_masks(model, data.patients, cfg, device)
        # unlabelled patients' crops too: contrastive pretraining (cls-pretrain-rounds) learns from them
        datasets, report = build_roi_datasets(masks, data.patients, cfg.datasets, cfg, include_unlabelled=True)
        counts = {
            P.ROI_MISSING_SEQUENCE: dict(report.missing_sequence),
            P.ROI_EMPTY_PREDICTION: int(report.empty_mask),
        }
        save_roi(data.site.cache_dir, key, datasets, counts)
        for line in report.lines():
            log.info("site %s ROI: %s", data.site.name, line)
    counts = roi_report(data.site.cache_dir, key)
    missing = counts.get(P.ROI_MISSING_SEQUENCE, {})
    empty = int(counts.get(P.ROI_EMPTY_PREDICTION, 0))
    out: dict[str, int | float] = {}
    for name in cfg.datasets:
        ds = load_roi(data.site.cache_dir, key, name)
        counts = {s: sum(1 for x in ds.split if x == s) for s in ("train", "val", "test", UNLABELLED_SPLIT)}
        labelled = counts["train"] + counts["val"] + counts["test"]
        out[P.roi_metric_key(name, P.ROI_TRAIN)] = counts["train"]
        out[P.roi_metric_key(name, P.ROI_VAL)] = counts["val"]
        out[P.roi_metric_key(name, P.ROI_TEST)] = labelled if data.site.eval_only else counts["test"]
        # only what the site's pretraining may learn from (node config pretraining "all"): the coordinator caps a
        # pretraining reply's num-examples by it
        pretrains_unlabelled = not data.site.eval_only and data.site.pretraining == P.PRETRAINING_ALL
        out[P.roi_metric_key(name, P.ROI_UNLABELLED)] = counts[UNLABELLED_SPLIT] if pretrains_unlabelled else 0
        out[P.roi_metric_key(name, P.ROI_MISSING_SEQUENCE)] = int(missing.get(name, 0))
        out[P.roi_metric_key(name, P.ROI_EMPTY_PREDICTION)] = empty
        if data.site.eval_only:
            out[P.roi_metric_key(name, P.ROI_TRAIN)] = 0
    return out


def train_cls(
    record: Any, conf: Mapping[str, Any], data: SiteData, cfg: PipelineConfig, device: torch.device
) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """One round of local classifier training on the ROI crops of ``conf["dataset"]`` (of contrastive
    pretraining of its backbone when ``conf["stage"]`` says so: :mod:`client.handlers_pretrain`)."""
    if str(conf.get(P.CFG_STAGE, P.STAGE_CLS)) == P.STAGE_CLS_PRETRAIN:
        from client.handlers_pretrain import pretrain_cls

        return pretrain_cls(record, conf, data, cfg, device)
    rnd = int(conf[P.CFG_ROUND])
    name, full = requested_roi(conf, data.site.cache_dir, cfg)
    cfg_r = seeded_config(cfg, "cls", name, rnd, data.site.name)
    model = build_classifier(cfg.cls, len(parse_dataset_name(name)), dp=cfg.dp_models)
    load_global(model, record)
    fedbn = bool(conf.get(P.CFG_KEEP_LOCAL_NORM, False))
    study = str(conf.get(P.CFG_STUDY, "study"))
    if fedbn:
        overlay_local_norm(model, data.site.cache_dir, study, f"cls:{name}", rnd)
    ds = full.subset("train")
    metrics = untrained_round()
    if len(ds) < 2 or data.site.eval_only:  # one slice cannot train BatchNorm layers (batch of 1)
        log.warning(
            "site %s: no training ROI for dataset %s (missing sequence or empty masks): skipping",
            data.site.name,
            name,
        )
        return state_to_numpy(model.state_dict()), metrics
    epochs = cfg.cls_epochs
    total = int(conf.get(P.CFG_TOTAL_ROUNDS, rnd)) * epochs
    cache = data.site.cache_dir
    stage_key = f"cls:{name}"
    keep = cfg.cls.local_optimizer == "keep"
    optimizer_state = load_optimizer_state(cache, study, stage_key, rnd, model) if keep else None
    total_rounds = int(conf[P.CFG_TOTAL_ROUNDS]) if P.CFG_TOTAL_ROUNDS in conf else None
    keep_optimizer_state = state_keeper(cache, study, stage_key, rnd, total_rounds) if keep else None
    if cfg.dp == "local":
        from client.privacy_site import private_round
        from shared.privacy.dp_training import train_classifier_dp

        stats, dp_metrics = private_round(
            data=data,
            cfg=cfg,
            conf=conf,
            n_patients=len(ds.patients),
            batch_size=cfg.cls.batch_size,
            epochs=epochs,
            train=lambda plan: train_classifier_dp(
                model, ds, cfg_r, device, plan, optimizer_state, keep_optimizer_state
            ),
        )
        metrics.update(dp_metrics)
    else:
        stats = train_classifier(
            model,
            ds,
            cfg_r,
            device,
            epochs=epochs,
            prox_mu=float(conf.get(P.CFG_PROX_MU, 0.0)),
            start_epoch=(rnd - 1) * epochs,
            total_epochs=max(total, rnd * epochs),
            optimizer_state=optimizer_state,
            keep_optimizer_state=keep_optimizer_state,
        )
    if fedbn:
        save_local_norm(model, data.site.cache_dir, study, f"cls:{name}", rnd)
    metrics.update(round_figures(stats, len(ds.patients)))
    return state_to_numpy(model.state_dict()), metrics


def evaluate_cls(
    record: Any, conf: Mapping[str, Any], data: SiteData, cfg: PipelineConfig, device: torch.device
) -> dict[str, int | float | list[int]]:
    """Per-class histograms of patient scores on ``conf["split"]`` -> ``EVAL_CLS_METRICS``."""
    t0 = time.perf_counter()
    name, full = requested_roi(conf, data.site.cache_dir, cfg)
    split = str(conf.get(P.CFG_SPLIT, "val"))
    # an evaluation-only site is tested on every labelled patient (never the unlabelled ones)
    ds = full.subset(*P.SPLITS) if (data.site.eval_only and split == "test") else full.subset(split)
    model = build_classifier(cfg.cls, len(parse_dataset_name(name)), dp=cfg.dp_models)
    load_global(model, record)
    rnd = int(conf.get(P.CFG_ROUND, 0))
    if conf.get(P.CFG_KEEP_LOCAL_NORM, False) and not data.site.eval_only:
        overlay_local_norm(
            model, data.site.cache_dir, str(conf.get(P.CFG_STUDY, "study")), f"cls:{name}", rnd + 1
        )
    site = data.site
    secure_sum = bool(conf.get(P.CFG_SECURE_SUM, False))
    bins = max(1, min(cfg.hist_bins, site.max_hist_bins))
    if secure_sum:
        bins = secure_hist_bins(cfg.hist_bins)
        if bins > site.max_hist_bins:
            raise ConfigError(
                f"a secure sum of the sites' histograms uses {bins} score bins (hist-bins, at most "
                f"{SECURE_HIST_BINS}) and this site answers at most max-hist-bins={site.max_hist_bins} (node "
                "config): every site of a sum needs the same bins, so this site sits out the evaluation; lower "
                "hist-bins in the run config or raise max-hist-bins"
            )
    if len(ds) == 0:
        return {
            P.NUM_EXAMPLES: 0,
            P.NUM_PATIENTS: 0,
            P.HIST_POS: [0] * bins,
            P.HIST_NEG: [0] * bins,
            P.HIST_SPAN: [1] * bins,
            P.EVAL_LOSS: 0.0,
            P.EVAL_SECONDS: float(time.perf_counter() - t0),
        }
    scores, labels = patient_scores(model, ds, cfg, device)
    keep = np.isfinite(scores)
    scores, labels = scores[keep], labels[keep]
    pos, neg = fixed_histograms(scores, labels, bins, bins)
    s = np.clip(scores, 1e-6, 1 - 1e-6)
    loss = float(-np.mean(labels * np.log(s) + (1 - labels) * np.log(1 - s))) if len(s) else 0.0
    n = int(len(scores))
    if cfg.dp_hist_noise > 0:  # noise on the fixed bins first: the merging below is post-processing
        from client.privacy_site import noisy_histograms

        pos, neg = noisy_histograms(pos, neg, data, cfg, conf)
        n, loss = sum(pos) + sum(neg), 0.0  # the loss is a per-patient mean: not released under DP
    if secure_sum:  # masked into a sum over the sites: the coordinator never sees these bins on their own
        hist_pos, hist_neg, hist_span = pos, neg, [1] * len(pos)
    else:
        hist_pos, hist_neg, hist_span = merge_small_groups(pos, neg, site.min_hist_count)
    return {
        P.NUM_EXAMPLES: n,
        P.NUM_PATIENTS: n,
        P.HIST_POS: hist_pos,
        P.HIST_NEG: hist_neg,
        P.HIST_SPAN: hist_span,
        P.EVAL_LOSS: loss,
        P.EVAL_SECONDS: float(time.perf_counter() - t0),
    }
