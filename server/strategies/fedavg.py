"""FedAvg (sample-weighted by ``num-examples``) with nasofl's stage routing and update checks."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from server.strategies.base import StageMixin


class CheckedFedAvg(StageMixin, FedAvg):
    """FedAvg; every reply is checked before averaging (see :class:`StageMixin`)."""
