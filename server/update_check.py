"""Check every received model update before it can reach aggregation.

A reply is usable only when its arrays have exactly the global model's keys and shapes, only finite values,
and a non-negative integer example count. Anything else is dropped (and counted in the run log) so that one
broken or malicious site cannot poison the global model, nor end the run through Flower's consistency check.
Pure numpy: no Flower here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def update_problem(
    global_arrays: Mapping[str, np.ndarray],
    update: Mapping[str, np.ndarray],
    metrics: Mapping[str, object] | None = None,
    required_metrics: tuple[str, ...] = (),
    weight_key: str = "num-examples",
) -> str | None:
    """Why ``update`` cannot be aggregated into ``global_arrays``, or None if it can.

    ``global_arrays`` / ``update``: name -> ndarray (any shape, numeric). ``metrics``: the reply's MetricRecord
    as a mapping; ``required_metrics`` must all be present and ``weight_key`` must be a non-negative int.
    """
    missing = [k for k in global_arrays if k not in update]
    if missing:
        return f"missing {len(missing)} array(s), first {missing[0]!r}"
    extra = [k for k in update if k not in global_arrays]
    if extra:
        return f"{len(extra)} unexpected array(s), first {extra[0]!r}"
    for name, ref in global_arrays.items():
        arr = np.asarray(update[name])
        if tuple(arr.shape) != tuple(np.shape(ref)):
            return f"array {name!r} has shape {tuple(arr.shape)}, expected {tuple(np.shape(ref))}"
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            return f"array {name!r} has non-numeric dtype {arr.dtype}"
        if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
            return f"array {name!r} contains NaN or infinite values"
    if metrics is not None:
        absent = [k for k in required_metrics if k not in metrics]
        if absent:
            return f"metrics lack {absent[0]!r}"
        weight = metrics.get(weight_key)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return f"metric {weight_key!r} is {weight!r}, expected a number"
        if not math.isfinite(float(weight)) or weight < 0:
            return f"metric {weight_key!r} is {weight!r}, expected a finite number >= 0"
        for key, value in metrics.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return f"metric {key!r} is not finite"
    return None


#: longest histogram a site may answer with (the coordinator's ``hist-bins`` is at most this)
MAX_HIST_BINS = 1_000_000


def eval_problem(
    metrics: Mapping[str, object], hist_keys: tuple[str, ...] = ("hist-pos", "hist-neg", "hist-span")
) -> str | None:
    """Why an evaluation reply's metrics cannot be pooled, or None: every scalar a finite number >= 0 (losses
    included), every histogram a list of counts >= 0, the histograms of one reply of equal length, and (with
    ``hist-span``) each group inside the histogram, with no count in a bin inside a group."""
    lengths = set()
    for key, value in metrics.items():
        if key in hist_keys:
            if not isinstance(value, list) or not value or len(value) > MAX_HIST_BINS:
                return f"metric {key!r} is not a list of 1..{MAX_HIST_BINS} counts"
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
                return f"metric {key!r} holds a value that is not a count >= 0"
            lengths.add(len(value))
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key!r} is {value!r}, expected a number"
        elif not math.isfinite(float(value)) or value < 0:
            return f"metric {key!r} is {value!r}, expected a finite number >= 0"
    if len(lengths) > 1:
        return f"histograms of one reply differ in length: {sorted(lengths)}"
    span = metrics.get("hist-span")
    if isinstance(span, list):
        covered = 0
        for i, width in enumerate(span):
            if i < covered:
                if width != 0:
                    return f"hist-span[{i}]={width} inside the group that starts before it"
                continue
            if width == 0:
                return f"hist-span[{i}]=0 outside any group"
            covered = i + width
        if covered != len(span):
            return f"hist-span groups end at bin {covered}, the histogram has {len(span)} bins"
        counts = [metrics.get(k) for k in hist_keys[:2]]
        if any(isinstance(c, list) and any(c[i] for i, w in enumerate(span) if w == 0) for c in counts):
            return "a count sits in a bin inside a merged group (hist-span 0)"
    return None
