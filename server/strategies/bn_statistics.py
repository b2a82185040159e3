"""``bn-statistics``: how the coordinator combines the sites' BatchNorm running statistics.

``mean`` (Flower's default): the sample-weighted mean of each site's running mean and of each site's running
variance. That variance is the average spread *within* a site; the spread *between* the sites' means (another
scanner, another protocol) is missing, so the global model normalises pooled activations by a variance smaller
than theirs. ``mixture``: the variance of the sites' activations taken together, from the same two statistics:
``sum_i w_i (var_i + mean_i^2) - (sum_i w_i mean_i)^2`` (never below the weighted mean of the variances). It needs
each site's statistics, so it runs with the mean strategies (fedavg, fedprox, fedavgm) without secure
aggregation or central DP (checked in :mod:`server.privacy`). The running means are the weighted mean either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

VARIANCE = ".running_var"
MEAN = ".running_mean"


def mixture_variances(
    averaged: Mapping[str, np.ndarray], sites: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """``averaged`` with each ``<layer>.running_var`` replaced by the variance of the sites' mixture.

    ``sites``: each contributing site's arrays, in the order of ``weights`` (their aggregation weights)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(sites) != len(w) or not len(w) or not np.all(w >= 0) or w.sum() <= 0:
        raise ValueError(f"{len(sites)} sites and weights {list(weights)}: expected one weight >= 0 per site")
    w = w / w.sum()
    out = dict(averaged)
    for key, mean_var in averaged.items():
        mean_key = key.removesuffix(VARIANCE) + MEAN
        if not key.endswith(VARIANCE) or mean_key not in averaged:
            continue
        means = np.stack([np.asarray(s[mean_key], dtype=np.float64) for s in sites])
        variances = np.stack([np.asarray(s[key], dtype=np.float64) for s in sites])
        pooled_mean = np.tensordot(w, means, axes=1)
        second_moment = np.tensordot(w, variances + means**2, axes=1)
        out[key] = np.maximum(second_moment - pooled_mean**2, 0.0).astype(np.asarray(mean_var).dtype)
    return out
