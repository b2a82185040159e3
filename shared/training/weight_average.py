"""``seg-weight-ema``: an exponential moving average of the segmenter's weights, round after round.

Federated, the coordinator averages each round's global model into it (``server/study.py``); pooled, each
epoch's model (``simulations/centralized.py``). Training goes on from the un-averaged weights: only what is
validated, selected (``select-round``) and kept is the average (Polyak averaging), so a round that swings the
global model moves the kept model by a share ``1 - decay`` of the swing. Floating-point arrays (BatchNorm's
running statistics too) are averaged; integer arrays (BatchNorm's batch counter) take the newest value. Each array
keeps its own dtype, so the average checkpoints and resumes exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Arrays = dict[str, np.ndarray]


class WeightAverage:
    """``average = decay x average + (1 - decay) x newest``; the first model starts the average."""

    def __init__(self, decay: float, value: Mapping[str, np.ndarray] | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"seg-weight-ema decay {decay!r}: expected a value in (0, 1) (0 turns it off)")
        self.decay = decay
        self.value: Arrays = {k: np.array(v) for k, v in (value or {}).items()}

    def update(self, arrays: Mapping[str, np.ndarray]) -> Arrays:
        """Fold ``arrays`` (the newest model) in; returns the average (the caller must not modify it)."""
        if not self.value:
            self.value = {k: np.array(v) for k, v in arrays.items()}
            return self.value
        if set(arrays) != set(self.value):
            raise ValueError(
                "seg-weight-ema: the model's arrays differ from the average's (was the average written for "
                "another model?)"
            )
        out: Arrays = {}
        for name, new in arrays.items():
            new = np.asarray(new)
            old = self.value[name]
            if old.shape != new.shape:
                raise ValueError(
                    f"seg-weight-ema: array {name!r} has shape {new.shape}, the average {old.shape}"
                )
            if np.issubdtype(new.dtype, np.floating):
                mixed = self.decay * old.astype(np.float64) + (1.0 - self.decay) * new.astype(np.float64)
                out[name] = mixed.astype(new.dtype)
            else:
                out[name] = np.array(new)
        self.value = out
        return out
