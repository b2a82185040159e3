"""FedAvgM: the averaged update taken as a pseudo-gradient, with server momentum and a server learning rate.

Each round's step is ``server-lr x (momentum x previous step + (global - mean of the sites' models))``; the momentum
buffer is checkpointed every round so a resumed study continues it exactly. It reads only the weighted mean of the
updates, so it runs under secure aggregation as FedAvg does.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array
from flwr.serverapp.strategy import FedAvgM

from server.strategies.base import StageMixin

#: the checkpointed part of the strategy state: the momentum buffer, array name -> array
MOMENTUM = "momentum"


class CheckedFedAvgM(StageMixin, FedAvgM):
    """Flower's FedAvgM with update checks; ``strategy_state()`` returns its momentum buffer for exact resume."""

    _loaded_momentum: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[override]
        # the step is taken from the model sent this round (after a resume: the checkpoint's), not a stale copy
        self.current_arrays = arrays
        if self._loaded_momentum is not None:
            # Flower keeps the buffer as a list in the model's array order; a checkpoint keeps it by name
            missing = set(arrays.keys()) ^ set(self._loaded_momentum)
            if missing:
                raise ValueError(
                    f"the checkpoint's FedAvgM momentum does not fit the model: arrays {sorted(missing)[:5]} differ"
                )
            self.momentum_vector = [self._loaded_momentum[k] for k in arrays.keys()]
            self._loaded_momentum = None
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # type: ignore[override]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self._global_numpy is not None:
            # integer arrays (BatchNorm's batch counters) are counters, not weights: back to the dtype sent
            for name, sent in self._global_numpy.items():
                if np.issubdtype(sent.dtype, np.integer) and name in arrays:
                    value = np.rint(arrays[name].numpy()).astype(sent.dtype)
                    arrays[name] = Array(value)
        return arrays, metrics

    def strategy_state(self) -> dict[str, dict[str, np.ndarray]]:
        if self.momentum_vector is None or self.current_arrays is None:
            return {}
        names = list(self.current_arrays.keys())
        return {MOMENTUM: {k: np.asarray(v) for k, v in zip(names, self.momentum_vector, strict=True)}}

    def load_strategy_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        unknown = set(state) - {MOMENTUM}
        if unknown:
            raise ValueError(
                f"checkpoint strategy state has unknown parts {sorted(unknown)}: expected {MOMENTUM!r}"
            )
        if MOMENTUM in state:  # put in Flower's list order when the round's model arrives (configure_train)
            self._loaded_momentum = {k: np.asarray(v) for k, v in state[MOMENTUM].items()}
