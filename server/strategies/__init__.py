"""Strategy wrappers, one file each; :func:`build_strategy` picks one from the federation settings."""

from __future__ import annotations

from server.config import FederationConfig
from server.strategies.base import EvalRound, StageMixin, TooFewSitesError, TrainRound


def build_strategy(fed: FederationConfig, dp: str = "off") -> StageMixin:
    """A fresh strategy object for one stage (or one classifier dataset).

    Flower's own minimums are set to 1 so that sampling never blocks waiting for nodes (Flower samples only
    among connected nodes and would wait for the configured minimum to connect);
    nasofl enforces ``min-sites`` itself on the checked replies (:class:`TooFewSitesError`).
    ``dp="central"``: the strategy averages uniformly and is wrapped in Flower's client-side fixed-clipping DP
    wrapper (:class:`server.strategies.central_dp.CentralDP`).
    """
    inner = _build(fed, uniform=dp == "central")
    if dp != "central":
        inner.bn_statistics = fed.bn_statistics
        return inner
    from server.strategies.central_dp import CentralDP

    return CentralDP(inner, fed.dp_noise_multiplier, fed.dp_clipping_norm)  # type: ignore[return-value]


def _build(fed: FederationConfig, uniform: bool) -> StageMixin:
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
    )
    if uniform:
        from shared.protocol import UPDATE_WEIGHT

        common["weighted_by_key"] = UPDATE_WEIGHT
    if fed.strategy == "fedavg":
        from server.strategies.fedavg import CheckedFedAvg

        return CheckedFedAvg(**common)
    if fed.strategy == "fedprox":
        from server.strategies.fedprox import CheckedFedProx

        return CheckedFedProx(**common, proximal_mu=fed.prox_mu)
    if fed.strategy == "fedadam":
        from server.strategies.fedadam import CheckedFedAdam

        return CheckedFedAdam(
            **common,
            eta=fed.fedadam_eta,
            beta_1=fed.fedadam_beta1,
            beta_2=fed.fedadam_beta2,
            tau=fed.fedadam_tau,
        )
    if fed.strategy == "fedavgm":
        from server.strategies.fedavgm import CheckedFedAvgM

        return CheckedFedAvgM(
            **common, server_learning_rate=fed.fedavgm_server_lr, server_momentum=fed.fedavgm_momentum
        )
    if fed.strategy == "fedmedian":
        from server.strategies.robust import CheckedFedMedian

        return CheckedFedMedian(**common)
    from server.strategies.robust import CheckedFedTrimmedAvg

    return CheckedFedTrimmedAvg(**common, beta=fed.trimmed_beta)


__all__ = ["EvalRound", "StageMixin", "TooFewSitesError", "TrainRound", "build_strategy"]
