"""A site's round of contrastive pretraining of a classifier backbone (``train.cls`` with config
``stage = "cls-pretrain"``; :mod:`shared.training.pretrain`).

The site trains on the ROI crops of its training patients and of its patients without a diagnosis (``query.roi``
keeps their crops, split ``unlabelled``; never a validation or test patient's); labels are never read. The reply has the shape of a
classifier round's (``TRAIN_METRICS``): counts, the mean contrastive loss, seconds; never a patient's crop, score or
pseudonym. Under ``dp = "local"`` the site refuses: the contrastive loss ties each patient's gradient to the others in
its batch, so DP-SGD's per-patient clipping would not bound it, and a round without DP must never run where DP was
promised.

The site has its own say, whatever the study asks (node config ``pretraining``, :data:`client.node_data.PRETRAINING_CHOICES`):
``diagnosed`` keeps its patients without a diagnosis out of pretraining (never trained on), ``refuse``
refuses every pretraining round before its crops are read; the coordinator logs the refusal and the study goes on with
the other sites (or ends FAILED under ``min-sites``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from client.local_model import load_global, overlay_local_norm, save_local_norm, seeded_config
from client.local_optimizer import load_optimizer_state, state_keeper
from client.node_data import SiteData
from client.roi_cache import requested_roi
from client.train_reply import round_figures, untrained_round
from shared import protocol as P
from shared.config import PipelineConfig, parse_dataset_name
from shared.errors import ConfigError
from shared.models import build_classifier
from shared.records import state_to_numpy
from shared.roi.datasets import UNLABELLED_SPLIT
from shared.training.pretrain import backbone_of, pretrain_backbone

log = logging.getLogger(__name__)


def pretrain_cls(
    record: Any, conf: Mapping[str, Any], data: SiteData, cfg: PipelineConfig, device: torch.device
) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """One round of contrastive pretraining on the training ROI crops of ``conf["dataset"]`` (and of the patients
    without a diagnosis unless the site's node config ``pretraining`` says ``diagnosed``)."""
    if data.site.pretraining == "refuse":
        raise ConfigError(
            f"site {data.site.name} refuses contrastive pretraining rounds (its node config pretraining='refuse'): "
            "the study trains its classifiers without this site's pretraining; a coordinator who wants every site "
            "in every round sets cls-pretrain-rounds=0 cls-pretrain-epochs=0"
        )
    if cfg.dp == "local":
        raise ConfigError(
            "the coordinator asked for a contrastive pretraining round under dp='local': this site refuses it (the "
            "loss compares patients within a batch, so DP-SGD cannot bound one patient's share); the study should "
            "set cls-pretrain-rounds=0"
        )
    if cfg.cls.pretrain_epochs < 1:
        raise ConfigError(
            "the coordinator asked for a contrastive pretraining round but the run config has cls-pretrain-epochs="
            f"{cfg.cls.pretrain_epochs}: set cls-pretrain-epochs >= 1 with cls-pretrain-rounds, or both to 0"
        )
    rnd = int(conf[P.CFG_ROUND])
    name, full = requested_roi(conf, data.site.cache_dir, cfg)
    stage_key = f"{P.STAGE_CLS_PRETRAIN}:{name}"
    cfg_r = seeded_config(cfg, P.STAGE_CLS_PRETRAIN, name, rnd, data.site.name)
    model = build_classifier(cfg.cls, len(parse_dataset_name(name)), dp=cfg.dp_models)
    load_global(model, record)
    study = str(conf.get(P.CFG_STUDY, "study"))
    cache = data.site.cache_dir
    fedbn = bool(conf.get(P.CFG_KEEP_LOCAL_NORM, False))
    if fedbn:
        overlay_local_norm(model, cache, study, stage_key, rnd)
    # never a validation or test patient with a diagnosis; the undiagnosed ones only where the site allows it
    ds = full.subset("train") if data.site.pretraining == "diagnosed" else full.subset("train", UNLABELLED_SPLIT)
    metrics = untrained_round()
    if len(ds.patients) < 2 or data.site.eval_only:  # one patient has no other to be told apart from
        log.warning(
            "site %s: fewer than 2 training or unlabelled patients with an ROI for dataset %s: skipping its "
            "pretraining round",
            data.site.name,
            name,
        )
        return state_to_numpy(model.state_dict()), metrics
    epochs = cfg.cls.pretrain_epochs
    total_rounds = int(conf[P.CFG_TOTAL_ROUNDS]) if P.CFG_TOTAL_ROUNDS in conf else None
    keep = cfg.cls.local_optimizer == "keep"
    optimizer_state = load_optimizer_state(cache, study, stage_key, rnd, backbone_of(model)) if keep else None
    stats = pretrain_backbone(
        model,
        ds,
        cfg_r,
        device,
        epochs,
        start_epoch=(rnd - 1) * epochs,
        total_epochs=max((total_rounds or rnd) * epochs, rnd * epochs),
        optimizer_state=optimizer_state,
        keep_optimizer_state=state_keeper(cache, study, stage_key, rnd, total_rounds) if keep else None,
    )
    if fedbn:
        save_local_norm(model, cache, study, stage_key, rnd)
    metrics.update(round_figures(stats, len(ds.patients)))
    return state_to_numpy(model.state_dict()), metrics
