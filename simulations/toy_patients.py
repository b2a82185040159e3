"""Hand-made patients for tests and benchmarks: a head-like disc with a bright ellipse tumour.

Not the phantom of the design spec (``simulations.synth``): just enough structure for a segmenter to find the
tumour and a classifier to separate the classes (NPL tumours are brighter on T2 and T1CE, with noise).
"""

from __future__ import annotations

import numpy as np

from shared.data.patient import SEQUENCES, PatientVolumes
from shared.pseudonym import pseudonym

_SPLITS = ("train", "train", "train", "val", "test")


def make_toy_patient(
    index: int,
    label: int,
    size: int = 48,
    depth: int = 8,
    seed: int = 0,
    scale: float = 1.0,
    sequences: tuple[str, ...] = SEQUENCES,
    split: str = "train",
    with_mask: bool = True,
) -> PatientVolumes:
    """One patient: volumes float32 ``(depth, size, size)`` in arbitrary scanner units times ``scale``."""
    rng = np.random.default_rng((seed, index))
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(size), np.arange(size), indexing="ij")
    c = size / 2
    head = ((yy - c) / (0.45 * size)) ** 2 + ((xx - c) / (0.4 * size)) ** 2 <= 1.0
    cy = c + rng.uniform(-0.12, 0.12) * size
    cx = c + rng.uniform(-0.12, 0.12) * size
    ry, rx = rng.uniform(0.10, 0.16, 2) * size
    cz, rz = depth / 2, max(1.5, depth * 0.3)
    tumour = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + ((zz - cz) / rz) ** 2 <= 1.0
    contrast = {"t1": 1.3, "t2": 1.6 + 0.5 * label, "t1ce": 1.8 + 0.6 * label}
    images = {}
    for s in sequences:
        v = np.where(head, 1.0, 0.05) + np.where(tumour, contrast[s] - 1.0 + rng.normal(0, 0.15), 0.0)
        v = v + rng.normal(0, 0.08, v.shape)
        images[s] = (np.clip(v, 0, None) * 100.0 * scale).astype(np.float32)
    return PatientVolumes(
        pseudonym=pseudonym(f"toy-{seed}-{index}"),
        label=label,
        images=images,
        mask=tumour.astype(np.uint8) if with_mask else None,
        spacing_mm=(3.0, 1.0, 1.0),
        split=split,  # type: ignore[arg-type]
    )


def make_toy_cohort(n: int = 20, size: int = 48, depth: int = 8, seed: int = 0) -> list[PatientVolumes]:
    """``n`` patients, labels alternating NPC/NPL, splits cycling train, train, train, val, test."""
    return [
        make_toy_patient(i, i % 2, size=size, depth=depth, seed=seed, split=_SPLITS[(i // 2) % len(_SPLITS)])
        for i in range(n)
    ]
