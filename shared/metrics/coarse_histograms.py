"""Score histograms a site may answer with, and pooled AUC over histograms of different bins.

**At the site** (:func:`site_histograms`): the coordinator asks for ``hist-bins`` = B equal bins on [0, 1]. The
site answers with ``b = min(B, max-hist-bins)`` equal bins (node config ``max-hist-bins``, default 100), then
merges neighbouring bins so that every non-empty group of bins holds at least ``min-hist-count`` patients (both
classes together; node config, default 3): from the lowest score up, a group starts at a non-empty bin and takes
in the next bins until it holds ``min-hist-count`` patients; a short last group joins the one before it. A group
of bins ``i..j`` is answered as its counts in bin ``i`` and ``hist-span[i] = j - i + 1`` (bins inside a group:
counts 0, span 0; a bin that is its own group: span 1). So no patient's score is narrowed to a range that holds
fewer than ``min-hist-count`` patients of that site, and no range is narrower than ``1 / max-hist-bins``.
Residual risk: a group's per-class counts are still answered, so when every patient of a group has the same label,
each of them is known to have that label and a score in that range; and the same patients, evaluated with each
round's model, give one histogram per round. Differential privacy (noise) is what bounds that; this rule only
coarsens.

**At the server** (:func:`pooled_auc`): a group is the score interval ``[i/b, (i+span)/b)``. A positive-negative
pair counts 1 when the positive's interval lies wholly above the negative's, 0 when wholly below, and ½ when they
overlap (a same-bin tie when the bins agree). With equal bins and no merged group this is exactly
:func:`shared.metrics.histogram_auc.auc_from_histograms`; in general the error bound stays
½ x (overlapping pairs) / (n_pos x n_neg), computable from what the sites sent, and a coarse site widens it only for
its own patients' pairs. The DeLong interval uses the same placements (each interval one tied score value).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.metrics.delong import normal_ci
from shared.metrics.histogram_auc import score_histograms


def coarsen(hist: Sequence[int], bins: int) -> list[int]:
    """Sum groups of ``len(hist) / bins`` neighbouring bins (``bins`` must divide ``len(hist)``)."""
    arr = np.asarray(hist, dtype=np.int64)
    if len(arr) % bins:
        raise ValueError(f"{bins} bins do not divide a histogram of {len(arr)} bins")
    return arr.reshape(bins, -1).sum(axis=1).astype(int).tolist()


def site_histograms(
    scores: np.ndarray, labels: np.ndarray, requested: int, max_bins: int, min_count: int
) -> tuple[list[int], list[int], list[int]]:
    """``(hist_pos, hist_neg, hist_span)`` as a site answers them (see the module docstring for the rule)."""
    pos, neg = fixed_histograms(scores, labels, requested, max_bins)
    return merge_small_groups(pos, neg, min_count)


def fixed_histograms(
    scores: np.ndarray, labels: np.ndarray, requested: int, max_bins: int
) -> tuple[list[int], list[int]]:
    """Per-class counts in ``min(requested, max_bins)`` equal bins on [0, 1] (before any merging; where DP noise
    on the histograms is on, it is added to these, and the merging is post-processing of the noisy counts)."""
    bins = max(1, min(requested, max_bins))
    if bins == 1:
        return [int(np.sum(np.asarray(labels) == 1))], [int(np.sum(np.asarray(labels) == 0))]
    pos, neg = score_histograms(scores, labels, bins)
    return [int(v) for v in pos], [int(v) for v in neg]


def merge_small_groups(
    pos: Sequence[int], neg: Sequence[int], min_count: int
) -> tuple[list[int], list[int], list[int]]:
    """Merge neighbouring bins until every non-empty group holds ``min_count`` patients -> (pos, neg, span)."""
    bins = len(pos)
    if bins == 1:
        return [int(pos[0])], [int(neg[0])], [1]
    total = np.asarray(pos) + np.asarray(neg)
    span = [1] * bins
    groups: list[list[int]] = []  # [start, end] of each merged non-empty group
    i = 0
    while i < bins:
        if total[i] == 0:
            i += 1
            continue
        j, held = i, int(total[i])
        while held < min_count and j + 1 < bins:
            j += 1
            held += int(total[j])
        groups.append([i, j, held])
        i = j + 1
    if len(groups) > 1 and groups[-1][2] < min_count:  # a short last group joins the one before it
        last = groups.pop()
        groups[-1][1], groups[-1][2] = last[1], groups[-1][2] + last[2]
    out_pos, out_neg = [0] * bins, [0] * bins
    for start, end, _ in groups:
        out_pos[start] = int(sum(pos[start : end + 1]))
        out_neg[start] = int(sum(neg[start : end + 1]))
        span[start] = end - start + 1
        for k in range(start + 1, end + 1):
            span[k] = 0
    return out_pos, out_neg, span


Site = tuple[Sequence[int], Sequence[int], Sequence[int] | None]  # (hist_pos, hist_neg, hist_span or None)


def _intervals(hists: Sequence[Site]) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty groups as rows ``(lo, hi, bins, count)`` (the interval ``[lo/bins, hi/bins)``), for positives
    and for negatives; the same interval from several sites is one row."""
    rows: tuple[dict, dict] = ({}, {})
    for pos, neg, span in hists:
        p, n = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
        w = np.ones_like(p) if span is None else np.asarray(span, dtype=np.int64)
        if p.shape != n.shape or p.shape != w.shape or p.ndim != 1 or len(p) == 0:
            raise ValueError(
                f"histograms differ in shape: positive {p.shape}, negative {n.shape}, span {w.shape}"
            )
        if (p < 0).any() or (n < 0).any() or (w < 0).any() or ((p + n > 0) & (w == 0)).any():
            raise ValueError("histograms contain negative counts, or counts in a bin inside a group (span 0)")
        b = len(p)
        for side, counts in ((0, p), (1, n)):
            for i in np.flatnonzero(counts):
                key = (int(i), int(i + w[i]), b)
                rows[side][key] = rows[side].get(key, 0) + int(counts[i])
    return tuple(  # type: ignore[return-value]
        np.asarray([(*k, c) for k, c in r.items()], dtype=np.int64).reshape(-1, 4) for r in rows
    )


def _pair_weights(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, overlap): W[i, j] = 1 / ½ / 0 for positive interval i above / overlapping / below negative j."""
    plo, phi, pb = pos[:, 0:1], pos[:, 1:2], pos[:, 2:3]
    nlo, nhi, nb = neg[:, 0][None, :], neg[:, 1][None, :], neg[:, 2][None, :]
    above = plo * nb >= nhi * pb  # plo/pb >= nhi/nb, in integers
    below = phi * nb <= nlo * pb
    overlap = ~above & ~below
    return above + 0.5 * overlap, overlap


def pooled_auc(hists: Sequence[Site], alpha: float = 0.95) -> tuple[float, float, float, float]:
    """``(auc, lo, hi, bound)`` over histograms of possibly different lengths (module docstring)."""
    pos, neg = _intervals(hists)
    m, k = float(pos[:, 3].sum()) if len(pos) else 0.0, float(neg[:, 3].sum()) if len(neg) else 0.0
    if m == 0 or k == 0:
        raise ValueError(f"AUC needs both classes; found {int(m)} NPL and {int(k)} NPC patients")
    w, overlap = _pair_weights(pos, neg)
    pc, nc = pos[:, 3].astype(np.float64), neg[:, 3].astype(np.float64)
    v10 = (w @ nc) / k  # per positive interval: share of negatives below it (ties ½)
    v01 = (pc @ w) / m  # per negative interval: share of positives above it
    value = float((pc * v10).sum() / m)
    s10 = float((pc * (v10 - value) ** 2).sum() / (m - 1)) if m > 1 else 0.0
    s01 = float((nc * (v01 - value) ** 2).sum() / (k - 1)) if k > 1 else 0.0
    lo, hi = normal_ci(value, s10 / m + s01 / k, alpha)
    bound = float(0.5 * (pc[:, None] * nc[None, :] * overlap).sum() / (m * k))
    return value, lo, hi, bound


def pooled_roc(hists: Sequence[Site]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from (0, 0) to (1, 1), each interval taken at its midpoint score (ties
    within a point): for the ROC plot and its Youden point; NPL when score >= threshold."""
    pos, neg = _intervals(hists)
    if not len(pos) or not len(neg):
        raise ValueError("ROC needs both classes")
    mids = np.concatenate(
        [(pos[:, 0] + pos[:, 1]) / (2 * pos[:, 2]), (neg[:, 0] + neg[:, 1]) / (2 * neg[:, 2])]
    )
    is_pos = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    counts = np.r_[pos[:, 3], neg[:, 3]].astype(np.float64)
    thresholds = np.unique(mids)[::-1]
    tp = np.array([(counts * is_pos)[mids >= t].sum() for t in thresholds])
    fp = np.array([(counts * (1 - is_pos))[mids >= t].sum() for t in thresholds])
    return (
        np.r_[0.0, fp / fp[-1]] if fp[-1] else np.r_[0.0, fp],
        np.r_[0.0, tp / tp[-1]] if tp[-1] else np.r_[0.0, tp],
        np.r_[np.inf, thresholds],
    )
