"""Privacy accounting: Opacus' accountants, and our own independent RDP computation to check them.

A mechanism run is a ``Release``: ``steps`` applications of the Gaussian mechanism with ``noise_multiplier``
(noise std / sensitivity), each on a Poisson sample of the privacy units taken with probability
``sample_rate`` (1.0: every unit every step, no amplification). Releases on the same units compose.

:func:`rdp_epsilon` is written from the papers, not from Opacus, so that an accounting error on small local
datasets (opacus#819, #571) would show as a disagreement (tests/test_privacy_accounting.py):

- RDP of the Poisson-subsampled Gaussian mechanism at integer order a (Mironov, Talwar, Zhang 2019, sec. 3.3):
  ``A_a = sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k) / (2 s^2))``, ``RDP(a) = log(A_a) / (a-1)``;
- RDP composes additively over steps and releases;
- RDP -> (epsilon, delta) (Balle et al. 2020, Thm 21): ``eps = RDP(a) + log((a-1)/a) - (log delta + log a)/(a-1)``,
  minimised over the orders.

Opacus is imported inside the functions that need it (it is the DP extra's dependency, loaded only where DP runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, logsumexp

from shared.errors import ConfigError

#: integer RDP orders of the independent computation
RDP_ORDERS: tuple[int, ...] = tuple(range(2, 257))


@dataclass(frozen=True)
class Release:
    """``steps`` Gaussian-mechanism steps with ``noise_multiplier`` on Poisson samples at ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise multiplier {self.noise_multiplier!r}: expected > 0")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate {self.sample_rate!r}: expected a value in (0, 1]")
        if self.steps < 0:
            raise ValueError(f"steps {self.steps!r}: expected >= 0")


def _log_a(q: float, sigma: float, order: int) -> float:
    """log A_a of the sampled Gaussian mechanism (integer order), by log-sum-exp over the binomial terms."""
    if q == 1.0:
        return order * (order - 1) / (2 * sigma**2)
    k = np.arange(order + 1, dtype=np.float64)
    log_binom = gammaln(order + 1) - gammaln(k + 1) - gammaln(order - k + 1)
    terms = log_binom + (order - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
    return float(logsumexp(terms))


def rdp_curve(releases: Iterable[Release], orders: tuple[int, ...] = RDP_ORDERS) -> np.ndarray:
    """Composed RDP ``(len(orders),)`` of the releases."""
    total = np.zeros(len(orders))
    for r in releases:
        if r.steps == 0:
            continue
        total += r.steps * np.array([_log_a(r.sample_rate, r.noise_multiplier, a) / (a - 1) for a in orders])
    return total


def rdp_epsilon(releases: Iterable[Release], delta: float, orders: tuple[int, ...] = RDP_ORDERS) -> float:
    """Epsilon at ``delta`` of the composed releases, from our own RDP computation (0 for no step)."""
    releases = [r for r in releases if r.steps > 0]
    if not releases:
        return 0.0
    if not 0 < delta < 1:
        raise ValueError(f"delta {delta!r}: expected a value in (0, 1)")
    rdp = rdp_curve(releases, orders)
    a = np.array(orders, dtype=np.float64)
    eps = rdp + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1)
    return float(max(0.0, np.nanmin(eps)))


def opacus_epsilon(releases: Iterable[Release], delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` from Opacus' accountant (``"rdp"`` or ``"prv"``) over the composed releases."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in releases if r.steps > 0]
    if not history:
        return 0.0
    if accountant == "rdp":
        acc = RDPAccountant()
    elif accountant == "prv":
        acc = PRVAccountant()
    else:
        raise ConfigError(f"dp-accountant={accountant!r} is not allowed: expected rdp or prv")
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


def noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier that spends ``target_epsilon`` at ``delta`` over ``steps`` (Opacus' search)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.005,
        )
    )


def auto_delta(configured: float, n_units: int) -> float:
    """``dp-delta``, or when it is 0 (auto) ``1 / (10 n)`` for ``n`` privacy units (patients or sites)."""
    if configured > 0:
        return configured
    return 1.0 / (10.0 * max(1, n_units))
