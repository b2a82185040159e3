"""Per-patient latent scores that drive every class difference (domain reference, section 5.5).

c = +1/2 for NPL and -1/2 for NPC. All N(0, 1) draws are independent:

- morphology score ``m = k * d_m * c + eps_m`` (positive = NPL-like: bulky, symmetric, smooth),
- nuisance ``u`` ("tissue water"): lowers T1 and raises T2, so T1 + T2 together cancel it,
- ``z_t1 = -k d1 c - lam u + sqrt(1 - lam^2) eps1``, ``z_t2 = -k d2 c + lam u + ...``, ``z_t1ce = -k d3 c + eps3``.

The tumour log-ratio to muscle of a sequence is its class-neutral mean plus ``sigma_seq * z_seq``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from shared.errors import ConfigError


@dataclass(frozen=True)
class ClassContrast:
    """The class-contrast knobs. ``k`` scales every class difference (0 = no signal, 1 = seed-like).

    d2 and lam are the section 5.5 solution for the seed AUCs. d1 (0.912) and d3 (1.272) are raised by the
    image calibration (``calibration.calibrate``) to 1.1 and 1.5: partial volume, bias field and noise blur the
    measured tumour/muscle ratios, most on T1 where the tumour/muscle contrast is smallest; with the latent
    values T1 measured below T2 (0.708 vs 0.714 at 600 patients) and T1CE no better than T1. With them, image
    features at k = 1 rank t1+t2 > t1ce > t1 > t2 as the seed did (600 patients, seed 0: 0.896 > 0.821 >
    0.743 > 0.714; table: ``nasofl-sim calibrate``).
    """

    k: float = 1.0
    d_m: float = 0.6
    d1: float = 1.1
    d2: float = 0.742
    d3: float = 1.5
    lam: float = 0.811

    def __post_init__(self) -> None:
        if not 0.0 <= self.k <= 4.0:
            raise ConfigError(
                f"difficulty k={self.k!r} is out of range; expected 0 <= k <= 4 (1 = seed-like)"
            )
        for key in ("d_m", "d1", "d2", "d3"):
            value = getattr(self, key)
            if not 0.0 <= value <= 5.0:
                raise ConfigError(f"class contrast {key}={value!r} is out of range; expected 0..5")
        if not 0.0 <= self.lam < 1.0:
            raise ConfigError(f"nuisance coupling lam={self.lam!r} is out of range; expected 0 <= lam < 1")

    @classmethod
    def from_target_aucs(
        cls, t1: float, t2: float, t1ce: float, t1_t2: float, d_m: float = 0.6, k: float = 1.0
    ) -> ClassContrast:
        """Solve d1, d2, d3 and lam for latent-feature AUC targets (section 5.5 formulas)."""
        for name, auc in (("t1", t1), ("t2", t2), ("t1ce", t1ce), ("t1_t2", t1_t2)):
            if not 0.5 < auc < 1.0:
                raise ConfigError(f"target AUC {name}={auc!r} is out of range; expected 0.5 < AUC < 1")

        def d_of(auc: float) -> float:
            value = 2 * norm.ppf(auc) ** 2 - d_m**2
            if value <= 0:
                raise ConfigError(f"target AUC {auc} is below what morphology alone gives (d_m={d_m})")
            return math.sqrt(value)

        d1, d2, d3 = d_of(t1), d_of(t2), d_of(t1ce)
        big_a = 2 * norm.ppf(t1_t2) ** 2 - d_m**2
        # A lam^4 + 2 d1 d2 lam^2 - (A - d1^2 - d2^2) = 0, solved for lam^2.
        a, b, cc = big_a, 2 * d1 * d2, -(big_a - d1**2 - d2**2)
        lam2 = (-b + math.sqrt(b * b - 4 * a * cc)) / (2 * a)
        if not 0 <= lam2 < 1:
            raise ConfigError(f"target AUCs have no nuisance coupling in [0, 1): lam^2={lam2:.3f}")
        return cls(k=k, d_m=d_m, d1=d1, d2=d2, d3=d3, lam=math.sqrt(lam2))


@dataclass(frozen=True)
class Latents:
    """One patient's latent scores. ``c`` is +0.5 for NPL, -0.5 for NPC; the ``*_class`` parts are the class shifts."""

    c: float
    m: float
    u: float
    z_t1: float
    z_t2: float
    z_t1ce: float
    z_t1_class: float
    z_t2_class: float
    z_t1ce_class: float

    def z(self, sequence: str) -> tuple[float, float]:
        """(total score, class part) of one sequence ("t1", "t2", "t1ce")."""
        return getattr(self, f"z_{sequence}"), getattr(self, f"z_{sequence}_class")


def draw_latents(rng: np.random.Generator, label: int, contrast: ClassContrast) -> Latents:
    """Draw one patient's latents. ``label``: 0 = NPC, 1 = NPL."""
    c = 0.5 if label == 1 else -0.5
    k = contrast.k
    eps_m, u, e1, e2, e3 = rng.standard_normal(5)
    rest = math.sqrt(1 - contrast.lam**2)
    z1c, z2c, z3c = -k * contrast.d1 * c, -k * contrast.d2 * c, -k * contrast.d3 * c
    return Latents(
        c=c,
        m=k * contrast.d_m * c + eps_m,
        u=float(u),
        z_t1=z1c - contrast.lam * u + rest * e1,
        z_t2=z2c + contrast.lam * u + rest * e2,
        z_t1ce=z3c + e3,
        z_t1_class=z1c,
        z_t2_class=z2c,
        z_t1ce_class=z3c,
    )


def cue_score(rng: np.random.Generator, m: float, weight: float) -> float:
    """A noisy read-out of the morphology score: ``weight * m + sqrt(1 - weight^2) * eps`` (positive = NPL-like).

    Each morphology cue uses its own read-out, so a single cue carries less class evidence than ``m``.
    """
    return weight * m + math.sqrt(max(0.0, 1.0 - weight**2)) * float(rng.standard_normal())


def flag(rng: np.random.Generator, score: float, p_npc: float, p_npl: float) -> bool:
    """Bernoulli draw with logit ``logit(p_mid) + slope * score`` (class evidence only through ``score``)."""
    p_mid = 0.5 * (p_npc + p_npl)
    delta = math.log(p_npl / (1 - p_npl)) - math.log(p_npc / (1 - p_npc))
    logit = math.log(p_mid / (1 - p_mid)) + delta * score / 1.2
    return bool(rng.random() < 1.0 / (1.0 + math.exp(-logit)))
