"""FedProx: FedAvg aggregation; sites add (mu/2)||w - w_global||^2 to their local loss (``proximal-mu``)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from server.strategies.base import StageMixin


class CheckedFedProx(StageMixin, FedProx):
    """Flower's FedProx sends ``config["proximal-mu"]``; ``client/handlers_*`` pass it to the training loops."""
