"""FedAdam: server-side Adam on the averaged update; moments (m_t, v_t) are checkpointed every round."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from server.strategies.base import StageMixin


class CheckedFedAdam(StageMixin, FedAdam):
    """Flower's FedAdam with update checks; ``strategy_state()`` returns its moments for exact resume."""
