"""FedAvgM: the averaged update taken as a pseudo-gradient, with server momentum and a server learning rate.

For every weight: ``step = momentum x previous step + (mean of the sites' models - global)`` and
``global += server-lr x step`` (round 1: no previous step, so server-lr 1 gives FedAvg's mean). Running statistics
(BatchNorm's running mean and variance, its batch counter) are averaged as FedAvg does: they are not weights, and
momentum could push a running variance below zero. The step is checkpointed every round so a resumed study
continues it exactly. It reads only the weighted mean of the updates, so it runs under secure aggregation.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg

from server.strategies.base import StageMixin
from shared.records import is_running_statistic

#: the checkpointed part of the strategy state: the last step, array name -> array
MOMENTUM = "momentum"


class CheckedFedAvgM(StageMixin, FedAvg):
    """FedAvg's checked mean, then the server's momentum step on the weights."""

    def __init__(self, *args, server_learning_rate: float = 1.0, server_momentum: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.step: dict[str, np.ndarray] = {}

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[override]
        # a resumed step that does not fit the model is refused before the sites spend a round training
        if self.step and set(self.step) != {k for k, a in arrays.items() if _is_weight(k, np.dtype(a.dtype))}:
            raise ValueError(
                "the FedAvgM momentum does not fit the model: its arrays differ from the global model's "
                "(was the checkpoint written for another model?)"
            )
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # type: ignore[override]
        arrays, metrics = super().aggregate_train(server_round, replies)
        sent = self._global_numpy
        if arrays is None or sent is None:
            return arrays, metrics
        out: dict[str, np.ndarray] = {}
        for name, mean_record in arrays.items():
            mean = mean_record.numpy()
            old = sent[name]
            if not _is_weight(name, old.dtype):
                out[name] = np.rint(mean).astype(old.dtype) if np.issubdtype(old.dtype, np.integer) else mean
                continue
            update = mean.astype(np.float32) - old.astype(np.float32)
            step = update + np.float32(self.server_momentum) * self.step[name] if name in self.step else update
            self.step[name] = step
            out[name] = (old.astype(np.float32) + np.float32(self.server_learning_rate) * step).astype(old.dtype)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in out.items()}), metrics

    def strategy_state(self) -> dict[str, dict[str, np.ndarray]]:
        return {MOMENTUM: dict(self.step)} if self.step else {}

    def load_strategy_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        unknown = set(state) - {MOMENTUM}
        if unknown:
            raise ValueError(
                f"checkpoint strategy state has unknown parts {sorted(unknown)}: expected {MOMENTUM!r}"
            )
        self.step = {k: np.asarray(v, dtype=np.float32) for k, v in state.get(MOMENTUM, {}).items()}


def _is_weight(name: str, dtype: np.dtype) -> bool:
    """A trained floating-point weight (the momentum's domain), not a running statistic or a counter."""
    return np.issubdtype(dtype, np.floating) and not is_running_statistic(name)
