"""Which round's global model a stage keeps: the last one, or the one with the best pooled validation figure.

The centralized baseline keeps the epoch with the best validation Dice / AUC; ``select-round = "best-val"`` gives
the federated study the same rule, on the pooled validation figures that the sites already send every round
(Dice from summed overlaps, AUC from summed score histograms). Only pooled aggregates are used: no site sends
anything more for it. The choice survives a resume (its state sits in the checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SELECT_RULES: tuple[str, ...] = ("best-val", "last")

Arrays = dict[str, np.ndarray]


@dataclass
class RoundSelection:
    """Tracks the kept round of one stage (or one classifier dataset)."""

    rule: str
    metric: str
    round: int = 0
    value: float = float("nan")
    arrays: Arrays = field(default_factory=dict)

    def offer(self, round: int, arrays: Arrays, pooled_val: dict[str, float]) -> bool:
        """Consider the global model after ``round``; True when it becomes the kept one.

        ``last`` keeps every new round. ``best-val`` keeps the first round with the highest finite pooled
        figure; a round whose validation failed or had no patients (NaN) is kept only while nothing better
        has been seen (so a stage always ends with some model).
        """
        value = float(pooled_val.get(self.metric, float("nan")))
        if self.rule == "last" or not self.arrays:
            better = True
        elif math.isnan(value):
            better = math.isnan(self.value)
        else:
            better = math.isnan(self.value) or value > self.value
        if better:
            self.round, self.value, self.arrays = round, value, arrays
        return better

    def summary(self, total_rounds: int) -> dict[str, object]:
        return {
            "rule": self.rule,
            "metric": f"pooled validation {self.metric}",
            "round": self.round,
            "of_rounds": total_rounds,
            "value": None if math.isnan(self.value) else round(self.value, 6),
        }
