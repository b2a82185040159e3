"""Differential privacy at the coordinator: refused option combinations, and the study's privacy report.

Every epsilon printed names its unit: ``one patient`` (local DP: each site's DP-SGD, each site's own ledger)
or ``one site`` (central DP: Flower's clipping wrapper; all training rounds of all stages composed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from server.config import FederationConfig
from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.privacy.accounting import Release, auto_delta, opacus_epsilon, rdp_epsilon
from shared.privacy.ledger import UNIT_PATIENT, UNIT_SITE

#: strategies whose output is not a clipped mean: central DP's noise (calibrated to C/n) would not cover them
CENTRAL_DP_STRATEGIES = ("fedavg", "fedprox")


def check_privacy_settings(fed: FederationConfig, cfg: PipelineConfig) -> None:
    """Refuse the combinations DP cannot honour, naming both keys (ConfigError)."""
    if cfg.dp == "central" and fed.strategy not in CENTRAL_DP_STRATEGIES:
        raise ConfigError(
            f"dp='central' with strategy={fed.strategy!r}: central DP adds noise calibrated to the sensitivity of a "
            f"mean of clipped updates (C/n); {fed.strategy} does not output that mean (a median, a trimmed mean or "
            "a server optimiser step), so the epsilon would not hold; use strategy fedavg or fedprox, or dp='local'"
        )
    if cfg.dp == "central" and fed.transport_dtype != "float32":
        raise ConfigError(
            f"dp='central' with transport-dtype={fed.transport_dtype!r}: the sites' clipped updates must travel in "
            "float32 (rounding after clipping could exceed dp-clipping-norm); set transport-dtype=float32"
        )
    if cfg.dp == "local" and fed.strategy == "fedprox":
        raise ConfigError(
            "dp='local' with strategy='fedprox': Opacus clips per-patient gradients of the data loss only; the "
            "proximal term's gradient would bypass clipping and noise; use strategy fedavg (or another) with "
            "dp='local'"
        )
    if fed.bn_statistics == "mixture" and (cfg.dp == "central" or fed.secure_aggregation):
        raise ConfigError(
            f"bn-statistics='mixture' with {'dp=central' if cfg.dp == 'central' else 'secure-aggregation=true'}: "
            "the mixture variance reads each site's BatchNorm statistics, which "
            + ("central DP clips and noises as part of the update" if cfg.dp == "central" else "the coordinator "
               "does not see under secure aggregation (only their sum)")
            + "; use bn-statistics='mean'"
        )
    if fed.secure_aggregation:
        check_secure_aggregation_settings(fed, cfg)


#: strategies that need each site's update and so cannot run on the SUM that secure aggregation reveals
SECURE_AGGREGATION_REFUSED = ("fedmedian", "fedtrimmedavg")


def check_secure_aggregation_settings(fed: FederationConfig, cfg: PipelineConfig) -> None:
    """Refuse what cannot run on masked updates, naming both keys (ConfigError). FedAvg, FedProx, FedAdam and
    FedAvgM need only the weighted mean of the updates (their server steps read the aggregate and their own state),
    so they are allowed; dp='local' is allowed (DP-SGD runs at the site before masking)."""
    if fed.strategy in SECURE_AGGREGATION_REFUSED:
        raise ConfigError(
            f"secure-aggregation=true with strategy={fed.strategy!r}: robust aggregation (a coordinate-wise median "
            "or trimmed mean) needs every site's update, and secure aggregation shows the coordinator only their "
            "sum; use strategy fedavg, fedprox, fedadam or fedavgm, or secure-aggregation=false"
        )
    if cfg.dp == "central":
        raise ConfigError(
            "secure-aggregation=true with dp='central': nasofl's central DP clips every site's update again at "
            "the coordinator (so a site without the clipping mod cannot enlarge the sensitivity), which needs each "
            "update in clear; use dp='local' (DP-SGD at the site, before masking) or secure-aggregation=false"
        )
    if fed.update_norm_factor != 0:
        raise ConfigError(
            f"secure-aggregation=true with update-norm-factor={fed.update_norm_factor:g}: the norm bound compares "
            "each site's update with the round's median at the coordinator, which sees only the masked sum; each "
            "site instead checks its update (keys, shapes, finite values) and clips every coordinate to "
            "+-secure-aggregation-clip before masking: set update-norm-factor=0"
        )
    if fed.min_sites < 2:
        raise ConfigError(
            f"secure-aggregation=true with min-sites={fed.min_sites}: the sum of one site's update is that "
            "update, and SecAgg+ needs at least 2 sites per round; set min-sites to 2 or more"
        )


def privacy_summary(
    history: Iterable[Mapping[str, Any]],
    cfg: PipelineConfig,
    fed: FederationConfig,
    central_releases: int,
    n_train_sites: int,
) -> dict[str, Any]:
    """The ``privacy`` entry of results.json: mode, unit, and per-site (local) or study (central) epsilons."""
    if cfg.dp == "off":
        return {
            "mode": "off",
            "unit": None,
            "note": "no differential privacy: updates are protected by TLS only",
        }
    if cfg.dp == "central":
        delta = auto_delta(cfg.dp_delta, n_train_sites)
        releases = [Release(fed.dp_noise_multiplier, 1.0, central_releases)]
        return {
            "mode": "central",
            "unit": UNIT_SITE,
            "releases": central_releases,
            "noise_multiplier": fed.dp_noise_multiplier,
            "clipping_norm": fed.dp_clipping_norm,
            "delta": delta,
            "epsilon": opacus_epsilon(releases, delta, "rdp"),
            "epsilon_independent_rdp": rdp_epsilon(releases, delta),
        }
    sites: dict[str, dict[str, Any]] = {}
    for line in history:
        for site, values in (line.get("site_privacy") or {}).items():
            sites[site] = {
                "epsilon_study": values.get("dp-epsilon-study"),
                "epsilon_site_total": values.get("dp-epsilon-site-total"),
                "epsilon_left": None
                if values.get("dp-epsilon-left", -1) < 0
                else values.get("dp-epsilon-left"),
                "delta": values.get("dp-delta-site"),
            }
        for site, reason in (line.get("sites_failed") or {}).items():
            if "refuses this round" in str(reason):
                sites.setdefault(site, {})["refused"] = str(reason)
    return {
        "mode": "local",
        "unit": UNIT_PATIENT,
        "target_epsilon_per_stage": cfg.dp_epsilon,
        "max_grad_norm": cfg.dp_max_grad_norm,
        "accountant": cfg.dp_accountant,
        "sites": sites,
    }


def privacy_lines(summary: Mapping[str, Any]) -> list[str]:
    """Report lines; each epsilon names its unit."""
    mode = summary.get("mode")
    if mode == "off":
        return ["privacy: no differential privacy (TLS in transit only)"]
    if mode == "central":
        return [
            f"privacy: central DP, epsilon {summary['epsilon']:.3f} at delta {summary['delta']:.2e} "
            f"(unit: {UNIT_SITE}) over {summary['releases']} training rounds of all stages; noise multiplier "
            f"{summary['noise_multiplier']}, clipping norm {summary['clipping_norm']}"
        ]
    out = [
        f"privacy: local DP-SGD, target epsilon {summary['target_epsilon_per_stage']} per stage at each site "
        f"(unit: {UNIT_PATIENT}), accountant {summary['accountant']}"
    ]
    for site, e in sorted(summary.get("sites", {}).items()):
        if e.get("epsilon_study") is not None:
            left = "no budget set" if e.get("epsilon_left") is None else f"{e['epsilon_left']:.3f} left"
            out.append(
                f"  {site}: epsilon {e['epsilon_study']:.3f} this study, {e['epsilon_site_total']:.3f} site total, "
                f"{left} (unit: {UNIT_PATIENT}, delta {e['delta']:.2e})"
            )
        if e.get("refused"):
            out.append(f"  {site}: refused a round over its budget (unit: {UNIT_PATIENT})")
    return out
