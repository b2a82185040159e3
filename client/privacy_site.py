"""Local DP at a site: plan the round, check the site's ledger against its budget, train, record the spend.

The ledger (:mod:`shared.privacy.ledger`) lives in the site's cache folder and spans runs; the check comes
BEFORE training, so a refused round spends nothing (PrivacyBudgetError: the guarded handler turns it into a
scrubbed error reply, the server logs the site as refusing, the study goes on with the others).
All epsilons of one site are given at one delta: ``dp-delta``, or 1/(10 x the site's patients) when it is 0.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from client.node_data import SiteData
from shared import protocol as P
from shared.config import PipelineConfig
from shared.privacy.accounting import Release, auto_delta
from shared.privacy.dp_sgd import DPPlan, plan_stage
from shared.privacy.ledger import PrivacyLedger, new_entry
from shared.training.device import TrainStats

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _plan(
    n: int, batch: int, epochs: int, rounds: int, eps: float, delta: float, clip: float, accountant: str
) -> DPPlan:
    # a pure function of its arguments: every round of a stage finds the same plan (the search takes seconds)
    return plan_stage(n, batch, epochs, rounds, eps, delta, clip, accountant)


def site_delta(cfg: PipelineConfig, data: SiteData) -> float:
    return auto_delta(cfg.dp_delta, len(data.patients))


def private_round(
    *,
    data: SiteData,
    cfg: PipelineConfig,
    conf: Mapping[str, Any],
    n_patients: int,
    batch_size: int,
    epochs: int,
    train: Callable[[DPPlan], TrainStats],
) -> tuple[TrainStats, dict[str, int | float]]:
    """Run ``train(plan)`` under the site's budget; returns its stats and the DP metrics of the reply."""
    study = str(conf[P.CFG_STUDY])
    stage = str(conf[P.CFG_STAGE])
    dataset = str(conf.get(P.CFG_DATASET, ""))
    rnd = int(conf[P.CFG_ROUND])
    rounds = int(conf.get(P.CFG_TOTAL_ROUNDS, rnd))
    delta = site_delta(cfg, data)
    acc = cfg.dp_accountant
    plan = _plan(n_patients, batch_size, epochs, rounds, cfg.dp_epsilon, delta, cfg.dp_max_grad_norm, acc)
    ledger = PrivacyLedger(data.site.cache_dir)
    budget = data.site.privacy_budget
    ledger.check_budget(data.site.name, budget, plan.release, delta, acc)
    stats = train(plan)
    ledger.record(
        new_entry(
            study=study,
            stage=stage,
            dataset=dataset,
            round=rnd,
            release=plan.release,
            max_grad_norm=plan.max_grad_norm,
            delta=delta,
            accountant=acc,
        )
    )
    total = ledger.epsilon(delta, acc)
    spent_study = ledger.epsilon(delta, acc, study=study)
    log.info(
        "site %s %s%s round %s: DP-SGD q %.3f noise %.3f steps %s; epsilon this study %.3f, site total %.3f "
        "(unit: one patient, delta %.2e)",
        data.site.name,
        stage,
        f" {dataset}" if dataset else "",
        rnd,
        plan.sample_rate,
        plan.noise_multiplier,
        plan.steps,
        spent_study,
        total,
        delta,
    )
    metrics: dict[str, int | float] = {
        P.UPDATE_WEIGHT: 1,
        P.DP_EPSILON_STUDY: float(spent_study),
        P.DP_EPSILON_SITE: float(total),
        P.DP_EPSILON_LEFT: float(max(0.0, budget - total)) if budget is not None else -1.0,
        P.DP_DELTA: float(delta),
    }
    return stats, metrics


def noisy_histograms(
    pos: Sequence[int], neg: Sequence[int], data: SiteData, cfg: PipelineConfig, conf: Mapping[str, Any]
) -> tuple[list[int], list[int]]:
    """The classifier's evaluation histograms (fixed bins, before any merging) with Gaussian noise (std
    ``dp-hist-noise``) on every bin, rounded and clipped at 0.

    Adding or removing one patient moves one count of one bin: L2 sensitivity 1, so each evaluation is one
    Gaussian release with noise multiplier ``dp-hist-noise`` on the site's patients, checked against the budget
    and recorded in the ledger like a training round (stage ``eval-cls``). What the site then does with the noisy
    counts (merging small groups) is post-processing. Noise: OS entropy, never the seed.
    """
    sigma = cfg.dp_hist_noise
    delta = site_delta(cfg, data)
    release = Release(sigma, 1.0, 1)
    ledger = PrivacyLedger(data.site.cache_dir)
    ledger.check_budget(data.site.name, data.site.privacy_budget, release, delta, cfg.dp_accountant)
    rng = np.random.default_rng()
    noisy = []
    for counts in (pos, neg):
        values = np.asarray(counts, dtype=np.float64) + rng.normal(0.0, sigma, len(counts))
        noisy.append([int(v) for v in np.clip(np.rint(values), 0, None)])
    ledger.record(
        new_entry(
            study=str(conf.get(P.CFG_STUDY, "study")),
            stage="eval-cls",
            dataset=str(conf.get(P.CFG_DATASET, "")),
            round=int(conf.get(P.CFG_ROUND, 0)),
            release=release,
            max_grad_norm=1.0,  # the histograms' L2 sensitivity
            delta=delta,
            accountant=cfg.dp_accountant,
        )
    )
    return noisy[0], noisy[1]
