"""Stage 1 at a site: train the global segmenter on local patients with masks; evaluate it into Dice sums.

Handlers take the received global arrays and config, return ``(arrays | None, metrics)`` with exactly the keys
of ``shared.protocol`` (counts, sums, losses, seconds): never per-patient values or identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from client.local_model import load_global, overlay_local_norm, save_local_norm, seeded_config
from client.local_optimizer import load_optimizer_state, state_keeper
from client.node_data import SiteData, split_patients
from client.train_reply import round_figures, untrained_round
from shared import protocol as P
from shared.config import PipelineConfig
from shared.models import build_segmenter
from shared.records import state_to_numpy
from shared.training.segmentation import evaluate_segmenter, train_segmenter

log = logging.getLogger(__name__)


def train_seg(
    record: Any, conf: Mapping[str, Any], data: SiteData, cfg: PipelineConfig, device: torch.device
) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """One round of local segmenter training -> (updated state as numpy, ``TRAIN_METRICS``)."""
    rnd = int(conf[P.CFG_ROUND])
    cfg_r = seeded_config(cfg, "seg", "", rnd, data.site.name)
    model = build_segmenter(cfg.seg, dp=cfg.dp_models)
    load_global(model, record)
    fedbn = bool(conf.get(P.CFG_KEEP_LOCAL_NORM, False))
    study = str(conf.get(P.CFG_STUDY, "study"))
    if fedbn:
        overlay_local_norm(model, data.site.cache_dir, study, "seg", rnd)
    patients = [
        p for p in data.patients if p.split == "train" and p.mask is not None and p.has(*cfg.seg.in_sequences)
    ]
    metrics = untrained_round(len(patients))
    if not patients or data.site.eval_only:
        log.warning(
            "site %s: no training patient with a mask and %s: skipping this round",
            data.site.name,
            "+".join(cfg.seg.in_sequences),
        )
        metrics[P.NUM_PATIENTS] = 0
        return state_to_numpy(model.state_dict()), metrics
    total_epochs = int(conf.get(P.CFG_TOTAL_ROUNDS, rnd)) * cfg.seg_epochs  # the stage's lr schedule spans it
    cache = data.site.cache_dir
    keep = cfg.seg.local_optimizer == "keep"
    optimizer_state = load_optimizer_state(cache, study, "seg", rnd, model) if keep else None
    total_rounds = int(conf[P.CFG_TOTAL_ROUNDS]) if P.CFG_TOTAL_ROUNDS in conf else None
    keep_optimizer_state = state_keeper(cache, study, "seg", rnd, total_rounds) if keep else None
    if cfg.dp == "local":
        from client.privacy_site import private_round
        from shared.privacy.dp_training import seg_training_patients, train_segmenter_dp

        stats, dp_metrics = private_round(
            data=data,
            cfg=cfg,
            conf=conf,
            n_patients=seg_training_patients(patients, cfg),
            batch_size=cfg.seg.batch_size,
            epochs=cfg.seg_epochs,
            train=lambda plan: train_segmenter_dp(
                model,
                patients,
                cfg_r,
                device,
                plan,
                epoch=rnd - 1,
                total_epochs=total_epochs,
                optimizer_state=optimizer_state,
                keep_optimizer_state=keep_optimizer_state,
            ),
        )
        metrics.update(dp_metrics)
    else:
        stats = train_segmenter(
            model,
            patients,
            cfg_r,
            device,
            epochs=cfg.seg_epochs,
            prox_mu=float(conf.get(P.CFG_PROX_MU, 0.0)),
            start_epoch=(rnd - 1) * cfg.seg_epochs,
            total_epochs=total_epochs,
            optimizer_state=optimizer_state,
            keep_optimizer_state=keep_optimizer_state,
        )
    if fedbn:
        save_local_norm(model, data.site.cache_dir, study, "seg", rnd)
    metrics.update(round_figures(stats, len(patients)))
    return state_to_numpy(model.state_dict()), metrics


def evaluate_seg(
    record: Any, conf: Mapping[str, Any], data: SiteData, cfg: PipelineConfig, device: torch.device
) -> dict[str, int | float]:
    """Dice sums of the global segmenter on the split in ``conf["split"]`` -> ``EVAL_SEG_METRICS``."""
    import time

    t0 = time.perf_counter()
    model = build_segmenter(cfg.seg, dp=cfg.dp_models)
    load_global(model, record)
    rnd = int(conf.get(P.CFG_ROUND, 0))
    if conf.get(P.CFG_KEEP_LOCAL_NORM, False) and not data.site.eval_only:
        overlay_local_norm(model, data.site.cache_dir, str(conf.get(P.CFG_STUDY, "study")), "seg", rnd + 1)
    patients = split_patients(data.patients, str(conf.get(P.CFG_SPLIT, "val")), data.site.eval_only)
    sums = evaluate_segmenter(model, patients, cfg, device)
    denom = sums.pred_sum + sums.true_sum
    dice = 2.0 * sums.intersection / denom if denom > 0 else 0.0
    return {
        P.NUM_EXAMPLES: int(sums.n_patients),
        P.NUM_PATIENTS: int(sums.n_patients),
        P.DICE_INTERSECTION: int(sums.intersection),
        P.DICE_PRED_SUM: int(sums.pred_sum),
        P.DICE_TRUE_SUM: int(sums.true_sum),
        P.EVAL_LOSS: float(1.0 - dice) if sums.n_patients else 0.0,
        P.EVAL_SECONDS: float(time.perf_counter() - t0),
    }
