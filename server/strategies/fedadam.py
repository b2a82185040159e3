"""FedAdam: server-side Adam on the averaged update; moments (m_t, v_t) are checkpointed every round."""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAdam

from server.strategies.base import StageMixin

#: Flower's FedOpt keeps its first and second moments in these attributes (dicts of arrays, None before round 1)
MOMENTS: tuple[str, ...] = ("m_t", "v_t")


class CheckedFedAdam(StageMixin, FedAdam):
    """Flower's FedAdam with update checks; ``strategy_state()`` returns its moments for exact resume."""

    def strategy_state(self) -> dict[str, dict[str, np.ndarray]]:
        state = {}
        for name in MOMENTS:
            value = getattr(self, name)
            if value:
                state[name] = {k: np.asarray(v) for k, v in value.items()}
        return state

    def load_strategy_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        unknown = set(state) - set(MOMENTS)
        if unknown:
            raise ValueError(
                f"checkpoint strategy state has unknown parts {sorted(unknown)}: expected {MOMENTS}"
            )
        for name, value in state.items():
            setattr(self, name, {k: np.asarray(v) for k, v in value.items()})
