"""The metrics of a site's ``train.*`` reply (``shared.protocol.TRAIN_METRICS``), one shape for every stage: a
round that trained nothing and a round's own figures. Counts, losses and seconds only.

A round whose training loss is not finite has not trained: it raises, so the site replies with a failure (the
coordinator counts it as a site that did not contribute) instead of weights with a loss that would read as 0."""

from __future__ import annotations

import numpy as np

from shared import protocol as P
from shared.errors import TrainingDivergedError
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
    """What a round reports after its training call; a loss that is not finite after any example raises
    ``TrainingDivergedError``. A call that saw no example (no loss to show) reports 0 examples: weight 0."""
    if stats.n_examples == 0:  # the DP keys are the caller's: a private round spends budget even then
        zero = {P.NUM_EXAMPLES: 0, P.NUM_PATIENTS: n_patients, P.TRAIN_LOSS: 0.0, P.TRAIN_LOSS_FIRST: 0.0}
        return {**zero, P.TRAIN_SECONDS: float(stats.seconds)}
    losses = {"mean": stats.mean_loss, "first": stats.loss_first, "last": stats.loss_last}
    bad = {name: float(x) for name, x in losses.items() if not np.isfinite(x)}
    if bad:
        found = ", ".join(f"{name} {x}" for name, x in bad.items())
        raise TrainingDivergedError(
            f"the local training loss is not finite ({found}) after {stats.n_examples} examples: this round sends "
            "no weights. Lower the stage's learning rate (seg-lr / cls-lr), or check this site's data with "
            "`nasofl-site validate`"
        )
    return {
        P.NUM_EXAMPLES: int(stats.n_examples),
        P.NUM_PATIENTS: n_patients,
        P.TRAIN_LOSS: float(stats.mean_loss),
        P.TRAIN_LOSS_FIRST: float(stats.loss_first),
        P.TRAIN_SECONDS: float(stats.seconds),
    }
