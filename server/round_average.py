"""``seg-weight-ema`` at the coordinator: the segmenter's weights averaged over rounds, and what a resume needs of it.

Each round the sites train from the round's global model as always; the model they are sent to *evaluate* is the
exponential moving average of the global models so far (:class:`shared.training.weight_average.WeightAverage`), so
the pooled validation Dice, the kept round (``select-round``) and the kept segmenter are the average's. Nothing
new travels: an evaluation message carries one model, as before, and the average is computed from global models the
coordinator already holds (under SecAgg+ too: it sees the sum, which is the global model).

Checkpoint: the running average and the kept round's average ride in the strategy state (``strategy.npz``) under
their own part names; ``current.npz`` stays the global model training continues from.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from shared.records import record_to_numpy
from shared.training.weight_average import WeightAverage

Arrays = dict[str, np.ndarray]

#: strategy-state parts: the running average, and the average of the kept round (the kept segmenter)
AVERAGE = "seg-weight-ema"
KEPT_AVERAGE = "seg-weight-ema-kept"
PARTS = (AVERAGE, KEPT_AVERAGE)


class RoundAverage:
    """The coordinator's average for one stage; :meth:`evaluated` is the strategy's ``eval_arrays_of`` hook."""

    def __init__(self, decay: float) -> None:
        self.average = WeightAverage(decay)

    def evaluated(self, global_model: ArrayRecord) -> ArrayRecord:
        """Fold the round's global model in; the average is what the sites evaluate this round."""
        value = self.average.update(record_to_numpy(global_model))
        return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in value.items()})

    @property
    def value(self) -> Arrays:
        return self.average.value

    def state(self, kept: Arrays) -> dict[str, Arrays]:
        return {AVERAGE: dict(self.average.value), KEPT_AVERAGE: dict(kept)}

    def resume(self, parts: dict[str, Arrays]) -> Arrays:
        """Restore the running average from a checkpoint's parts; returns the kept round's average."""
        missing = [p for p in PARTS if p not in parts]
        if missing:
            raise ValueError(
                f"seg-weight-ema is on but the checkpoint lacks {', '.join(missing)}: it was written without the "
                "average; resume with the settings it was written with, or start afresh with resume=false"
            )
        self.average.value = {k: np.array(v) for k, v in parts[AVERAGE].items()}
        return {k: np.array(v) for k, v in parts[KEPT_AVERAGE].items()}


def split_state(state: dict[str, Arrays]) -> tuple[dict[str, Arrays], dict[str, Arrays]]:
    """A checkpoint's strategy state -> (the strategy's own parts, the average's parts)."""
    own = {k: v for k, v in state.items() if k not in PARTS}
    average = {k: v for k, v in state.items() if k in PARTS}
    return own, average
