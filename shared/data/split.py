"""Deterministic patient-level train/val/test split per site, stratified by class, seeded.

Patients are ordered inside each class by a seeded hash of their pseudonym (stable when other
patients are added), then cut at the cumulative fractions. A patient is in exactly one split.
"""

from __future__ import annotations

import hashlib

from shared.data.patient import Split

SPLITS: tuple[Split, ...] = ("train", "val", "test")


def _counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder rounding of n * fractions; a non-zero fraction gets >= 1 patient when n allows."""
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(3), key=lambda i: -(raw[i] - counts[i]))[: n - sum(counts)]:
        counts[i] += 1
    for i in (1, 2):  # keep val/test non-empty when requested and the stratum is large enough
        if fractions[i] > 0 and counts[i] == 0 and counts[0] > 1:
            counts[0] -= 1
            counts[i] += 1
    return counts


def patient_split(
    labels: dict[str, int | None], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> dict[str, Split]:
    """pseudonym -> label (None when unlabelled, its own stratum) => pseudonym -> 'train' | 'val' | 'test'."""
    strata: dict[int | None, list[str]] = {}
    for pid, lab in labels.items():
        strata.setdefault(lab, []).append(pid)
    out: dict[str, Split] = {}
    for _lab, pids in sorted(strata.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        order = sorted(pids, key=lambda p: hashlib.sha256(f"{seed}\x00{p}".encode()).hexdigest())
        n_train, n_val, _ = _counts(len(order), fractions)
        for i, p in enumerate(order):
            out[p] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out
