"""Robust aggregation: coordinate-wise median, or trimmed mean (drops the ``beta`` extremes per coordinate)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg

from server.strategies.base import StageMixin


class CheckedFedMedian(StageMixin, FedMedian):
    """Coordinate-wise median of the checked updates (unweighted)."""


class CheckedFedTrimmedAvg(StageMixin, FedTrimmedAvg):
    """Trimmed mean of the checked updates (unweighted)."""
