"""Simulated radiologists for the synthetic cohort, so a reader study runs end to end without clinicians.

Noise model (equal-variance binormal, the standard model of ROC reader studies): a reader with skill ``auc``
forms a latent impression ``x = d' * y + e`` of each patient, ``y`` the generator's truth (1 = NPL) and
``e ~ N(0, 1)`` independent per reader and patient, ``d' = sqrt(2) * Phi^-1(auc)`` so that the continuous impression
has AUC ``auc``. The reader reports it on a 5-point confidence scale (1 = surely NPC ... 5 = surely NPL) by cutting
``x`` at ``d'/2 + (-1.5, -0.5, 0.5, 1.5)``; the rating's ties lower the AUC slightly below ``auc``.
Default readers follow the seed study's clinicians: junior AUC 0.77, senior 0.84.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.stats import norm

from shared.errors import SiteDataError
from shared.pseudonym import DEFAULT_SALT, pseudonym
from shared.reporting.results import SEED_CLINICIANS

DEFAULT_READERS: dict[str, float] = dict(SEED_CLINICIANS)
CUTS = (-1.5, -0.5, 0.5, 1.5)


def five_point_ratings(truth: np.ndarray, auc: float, rng: np.random.Generator) -> np.ndarray:
    """int ratings 1..5 ``(N,)`` for 0/1 ``truth (N,)`` from a reader of continuous-impression AUC ``auc``."""
    if not 0.5 <= auc < 1.0:
        raise ValueError(f"reader auc={auc}: expected a value in [0.5, 1)")
    d = np.sqrt(2.0) * norm.ppf(auc)
    x = d * np.asarray(truth, dtype=float) + rng.standard_normal(len(truth))
    return 1 + np.searchsorted(d / 2.0 + np.asarray(CUTS), x).astype(np.int64)


def cohort_truth(cohort_dir: Path, salt: str = DEFAULT_SALT) -> dict[str, int]:
    """pseudonym -> 0 NPC / 1 NPL from the generator's ``_truth/cohort.json``."""
    path = Path(cohort_dir) / "_truth" / "cohort.json"
    if not path.is_file():
        raise SiteDataError(f"{path} not found: expected a cohort written by `nasofl-sim synth`")
    patients = json.loads(path.read_text())["patients"]
    return {pseudonym(p["patient_id"], salt): int(p["label"]) for p in patients}


def simulate_readers(
    truth: Mapping[str, int], readers: Mapping[str, float], seed: int
) -> dict[str, dict[str, int]]:
    """reader name -> pseudonym -> rating, patients in sorted pseudonym order (reproducible per seed)."""
    rng = np.random.default_rng(seed)
    ids = sorted(truth)
    y = np.array([truth[i] for i in ids])
    return {
        name: dict(zip(ids, five_point_ratings(y, auc, rng).tolist(), strict=True))
        for name, auc in readers.items()
    }
