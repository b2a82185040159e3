"""The metrics of a site's ``train.*`` reply (``shared.protocol.TRAIN_METRICS``), one shape for every stage: a
round that trained nothing and a round's own figures. Counts, losses and seconds only."""

from __future__ import annotations

import numpy as np

from shared import protocol as P
from shared.training.device import TrainStats


def untrained_round(n_patients: int = 0) -> dict[str, int | float]:
    """Every key of the reply, nothing trained (no DP spent): a round the site had no data for, before it trains."""
    return {
        P.NUM_EXAMPLES: 0,
        P.NUM_PATIENTS: n_patients,
        P.TRAIN_LOSS: 0.0,
        P.TRAIN_LOSS_FIRST: 0.0,
        P.TRAIN_SECONDS: 0.0,
        **P.NO_DP_METRICS,
    }


def round_figures(stats: TrainStats, n_patients: int) -> dict[str, int | float]:
    """What a round that trained reports (a non-finite loss as 0.0: Flower's records take finite numbers)."""
    return {
        P.NUM_EXAMPLES: int(stats.n_examples),
        P.NUM_PATIENTS: n_patients,
        P.TRAIN_LOSS: _finite(stats.mean_loss),
        P.TRAIN_LOSS_FIRST: _finite(stats.loss_first),
        P.TRAIN_SECONDS: float(stats.seconds),
    }


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else 0.0
