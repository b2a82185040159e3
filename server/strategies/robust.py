"""Robust aggregation: coordinate-wise median, or trimmed mean (drops the ``beta`` extremes per coordinate)."""

from __future__ import annotations

import math

from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg

from server.strategies.base import StageMixin, TooFewSitesError


def trimmed_per_side(beta: float, n_sites: int) -> int:
    """Updates Flower's trimmed mean drops at each end of every coordinate: ``int(beta * n)``."""
    return int(beta * n_sites)


def trimming_problem(beta: float, n_sites: int) -> str | None:
    """Why a trimmed mean with ``trimmed-beta=beta`` over ``n_sites`` updates would trim no site, or None."""
    if trimmed_per_side(beta, n_sites) >= 1:
        return None
    need = next((n for n in range(1, 10_000) if trimmed_per_side(beta, n) >= 1), None)
    more = f"have at least {need} sites contribute (min-sites), or " if need else ""
    lowest = math.ceil(100 / max(n_sites, 1)) / 100  # two decimals that still trim one site
    raise_beta = f"raise trimmed-beta to {lowest:g}, or " if lowest <= 0.49 else ""
    return (
        f"fedtrimmedavg with trimmed-beta={beta:g} over {n_sites} site(s) trims int({beta:g} x {n_sites}) = 0 "
        f"updates at each end: a plain mean, no protection; {raise_beta}{more}use strategy=fedmedian"
    )


class CheckedFedMedian(StageMixin, FedMedian):
    """Coordinate-wise median of the checked updates (unweighted)."""


class CheckedFedTrimmedAvg(StageMixin, FedTrimmedAvg):
    """Trimmed mean of the checked updates (unweighted); refuses a round whose trimmed mean would trim nobody."""

    def check_contributors(self, true_round: int, sites: list[str]) -> None:
        problem = trimming_problem(self.beta, len(sites))
        if problem is not None:
            raise TooFewSitesError(f"round {true_round} of stage {self.action!r}: {problem}")
