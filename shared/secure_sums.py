"""Evaluation statistics as the vector a site masks under SecAgg+, and back: exact integer sums.

A site's evaluation reply is a set of sums (Dice intersections and sizes, patient counts, per-class score
histograms, loss x patients). Under ``secure-aggregation`` the coordinator must learn only their sum over the
sites, so each site sends them as one vector through Flower's SecAgg+ (the same protocol as the training updates).

Flower quantises every value ``v`` to ``(clip(v, -c, c) + c) x Q / 2c`` with stochastic rounding. With the clipping
range ``c = Q / 2`` (:data:`EXACT_CLIP`) the step is 1, so an integer ``v`` with ``|v| <= c`` is quantised
exactly, and the unmasked sum of integers is exact. Each value is first made an integer (counts as they are, the
loss sum in millionths, :data:`LOSS_SCALE`) and split into two digits base :data:`DIGIT` = 2**20
(``x = high x DIGIT + low``, ``0 <= low < DIGIT``), so counts up to 2**40 per site fit and the sum of up to
1,023 sites stays below Flower's modulus 2**32. Every site gives its vector the weight 1 (``num-examples`` =
``max_weight`` = 1), so Flower's unmasked "mean" is the sum divided by the number of sites summed.

Layout (``kind`` seg or cls, ``bins`` the histogram bins every site of the sum uses, :func:`secure_hist_bins`):
- seg: num-examples, num-patients, dice-intersection, dice-pred-sum, dice-true-sum, loss x num-examples;
- cls: num-examples, num-patients, loss x num-examples, hist-pos[bins], hist-neg[bins].
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared import protocol as P

#: Flower's default quantisation range (``SecAggPlusWorkflow``); the clipping range that makes its step 1
QUANTIZATION_RANGE = 4194304
EXACT_CLIP = QUANTIZATION_RANGE / 2
DIGIT = 2**20
LIMIT = DIGIT * (2**20)  # largest |integer| a site may put in one field
LOSS_SCALE = 1_000_000
#: the most score bins of a secure histogram sum: the default ``max-hist-bins`` a site answers (client.node_data)
SECURE_HIST_BINS = 100
LOSS_SUM = "eval-loss-sum"

_SEG_FIELDS = (
    P.NUM_EXAMPLES,
    P.NUM_PATIENTS,
    P.DICE_INTERSECTION,
    P.DICE_PRED_SUM,
    P.DICE_TRUE_SUM,
    LOSS_SUM,
)
_CLS_SCALARS = (P.NUM_EXAMPLES, P.NUM_PATIENTS, LOSS_SUM)


class SecureSumError(ValueError):
    """Statistics that cannot be encoded exactly (a value too large, a histogram of other bins)."""


def secure_hist_bins(hist_bins: int) -> int:
    """The bins of every site's histograms in a secure sum: ``min(hist-bins, 100)`` (a site at its default
    ``max-hist-bins`` answers them all; one configured below refuses, naming both keys)."""
    return max(1, min(int(hist_bins), SECURE_HIST_BINS))


def _integers(stats: Mapping[str, object], kind: str, bins: int) -> list[int]:
    n = int(stats[P.NUM_EXAMPLES])  # type: ignore[call-overload]
    loss_sum = round(float(stats[P.EVAL_LOSS]) * n * LOSS_SCALE)  # type: ignore[arg-type]
    if kind == "seg":
        values = {**{k: int(stats[k]) for k in _SEG_FIELDS if k != LOSS_SUM}, LOSS_SUM: loss_sum}  # type: ignore[call-overload]
        return [values[k] for k in _SEG_FIELDS]
    if kind != "cls":
        raise ValueError(f"unknown evaluation kind {kind!r}: seg or cls")
    pos, neg = list(stats[P.HIST_POS]), list(stats[P.HIST_NEG])  # type: ignore[call-overload]
    span = stats.get(P.HIST_SPAN)
    if len(pos) != bins or len(neg) != bins:
        raise SecureSumError(
            f"histograms of {len(pos)} / {len(neg)} bins, the secure sum uses {bins} (hist-bins): every site of a "
            "sum must answer the same bins"
        )
    if span is not None and any(int(s) != 1 for s in span):  # type: ignore[union-attr]
        raise SecureSumError("merged histogram groups (hist-span) cannot be summed: answer the fixed bins")
    return [n, int(stats[P.NUM_PATIENTS]), loss_sum, *map(int, pos), *map(int, neg)]  # type: ignore[call-overload]


def encode(stats: Mapping[str, object], kind: str, bins: int = 0) -> np.ndarray:
    """A site's evaluation statistics -> the float64 vector of base-2**20 digit pairs it masks."""
    ints = _integers(stats, kind, bins)
    too_big = [v for v in ints if abs(v) >= LIMIT]
    if too_big:
        raise SecureSumError(
            f"an evaluation sum of {too_big[0]} is beyond what a secure sum holds exactly ({LIMIT})"
        )
    digits = []
    for v in ints:
        high, low = divmod(v, DIGIT)
        digits += [high, low]
    return np.asarray(digits, dtype=np.float64)


def vector_length(kind: str, bins: int = 0) -> int:
    return 2 * (len(_SEG_FIELDS) if kind == "seg" else len(_CLS_SCALARS) + 2 * bins)


def decode(mean: np.ndarray, n_sites: int, kind: str, bins: int = 0) -> dict[str, object]:
    """Flower's unmasked mean of ``n_sites`` vectors -> the summed statistics, shaped like one site's reply
    (so the pooled figures are computed by the same code as in clear: ``server.pooled_eval``)."""
    if len(mean) != vector_length(kind, bins):
        raise SecureSumError(
            f"the unmasked vector has {len(mean)} values, {vector_length(kind, bins)} expected for {kind} with "
            f"{bins} bins: a site sent another layout"
        )
    digit_sums = np.rint(np.asarray(mean, dtype=np.float64) * n_sites).astype(np.int64)
    ints = [int(h) * DIGIT + int(lo) for h, lo in zip(digit_sums[0::2], digit_sums[1::2], strict=True)]
    if kind == "seg":
        values = dict(zip(_SEG_FIELDS, ints, strict=True))
        n = values[P.NUM_EXAMPLES]
        out: dict[str, object] = {k: v for k, v in values.items() if k != LOSS_SUM}
    else:
        n, patients, loss_sum = ints[:3]
        out = {
            P.NUM_EXAMPLES: n,
            P.NUM_PATIENTS: patients,
            P.HIST_POS: ints[3 : 3 + bins],
            P.HIST_NEG: ints[3 + bins : 3 + 2 * bins],
            P.HIST_SPAN: [1] * bins,
        }
        values = {LOSS_SUM: loss_sum}
    out[P.EVAL_LOSS] = values[LOSS_SUM] / LOSS_SCALE / n if n > 0 else 0.0
    return out
