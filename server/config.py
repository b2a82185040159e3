"""Federation settings: typed, validated once from Flower's ``run_config`` (defaults live in pyproject.toml).

``run_config`` holds two families of flat dashed keys: the pipeline's (``shared.config.PipelineConfig``:
``seg-*``, ``cls-*``, ``datasets``, ``seed`` ...) and the federation's (this module). :func:`split_run_config`
separates them; an unknown key, a missing key or a bad value raises ConfigError naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from server.round_selection import SELECT_RULES
from shared.app_config import coerce, unknown_key_error
from shared.config import PipelineConfig, pipeline_keys
from shared.errors import ConfigError
from shared.records import TRANSPORT_DTYPES

STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", "fedavgm", "fedmedian", "fedtrimmedavg")
#: ``bn-statistics``: how BatchNorm running statistics are combined (server.strategies.bn_statistics)
BN_STATISTICS: tuple[str, ...] = ("mean", "mixture")
#: strategies whose BatchNorm statistics are a weighted mean, which ``bn-statistics = "mixture"`` replaces
BN_MIXTURE_STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedavgm")

#: keys read by the ClientApp only (they reach every site with the run config)
CLIENT_KEYS: tuple[str, ...] = ("sim-data-root", "sim-cache-root", "debug-fail-sites")


@dataclass(frozen=True)
class FederationConfig:
    """How the study is federated. Field ``x_y`` <-> run-config key ``x-y``."""

    strategy: str
    seg_rounds: int
    cls_pretrain_rounds: int
    cls_rounds: int
    min_sites: int
    wait_for_sites_s: float
    round_timeout_s: float
    prox_mu: float
    fedadam_eta: float
    fedadam_beta1: float
    fedadam_beta2: float
    fedadam_tau: float
    fedavgm_server_lr: float
    fedavgm_momentum: float
    trimmed_beta: float
    update_norm_factor: float
    fedbn: bool
    bn_statistics: str
    transport_dtype: str
    out_dir: str
    checkpoint_dir: str
    resume: bool
    eval_only_sites: str
    select_round: str
    debug_stop_after_round: int
    dp_clipping_norm: float
    dp_noise_multiplier: float
    secure_aggregation: bool
    secure_aggregation_clip: float
    secure_aggregation_threshold: float

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            hint = difflib.get_close_matches(self.strategy, STRATEGIES, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"strategy={self.strategy!r} is not allowed: expected one of {', '.join(STRATEGIES)}{extra}"
            )
        _range("seg-rounds", self.seg_rounds, 0, 10_000)
        _range("cls-pretrain-rounds", self.cls_pretrain_rounds, 0, 10_000)
        _range("cls-rounds", self.cls_rounds, 0, 10_000)
        _range("min-sites", self.min_sites, 1, 10_000)
        _range("wait-for-sites-s", self.wait_for_sites_s, 0, 86_400)
        _range("round-timeout-s", self.round_timeout_s, 1, 7 * 86_400)
        _range("prox-mu", self.prox_mu, 0.0, 100.0)
        _range("fedadam-eta", self.fedadam_eta, 1e-12, 10.0)
        _range("fedadam-beta1", self.fedadam_beta1, 0.0, 0.999999)
        _range("fedadam-beta2", self.fedadam_beta2, 0.0, 0.999999)
        _range("fedadam-tau", self.fedadam_tau, 1e-12, 1.0)
        _range("fedavgm-server-lr", self.fedavgm_server_lr, 1e-6, 10.0)
        _range("fedavgm-momentum", self.fedavgm_momentum, 0.0, 0.99)
        _range("trimmed-beta", self.trimmed_beta, 0.0, 0.49)
        if self.update_norm_factor != 0:
            _range("update-norm-factor (0 turns the bound off)", self.update_norm_factor, 1.5, 1e6)
        if self.bn_statistics not in BN_STATISTICS:
            raise ConfigError(
                f"bn-statistics={self.bn_statistics!r} is not allowed: expected one of {', '.join(BN_STATISTICS)}"
            )
        if self.bn_statistics == "mixture" and self.strategy not in BN_MIXTURE_STRATEGIES:
            raise ConfigError(
                f"bn-statistics='mixture' with strategy={self.strategy!r}: the mixture variance pools the sites' "
                f"running statistics with the weights of a mean; use strategy {', '.join(BN_MIXTURE_STRATEGIES)}, "
                "or bn-statistics='mean'"
            )
        if self.transport_dtype not in TRANSPORT_DTYPES:
            raise ConfigError(
                f"transport-dtype={self.transport_dtype!r} is not allowed: expected one of {', '.join(TRANSPORT_DTYPES)}"
            )
        for key, value in (("out-dir", self.out_dir), ("checkpoint-dir", self.checkpoint_dir)):
            if value and not os.path.isabs(value):
                raise ConfigError(
                    f"{key}={value!r} is not an absolute path: the ServerApp's working directory is wherever the "
                    "SuperLink started, so give an absolute path"
                )
        if self.select_round not in SELECT_RULES:
            raise ConfigError(
                f"select-round={self.select_round!r} is not allowed: expected one of {', '.join(SELECT_RULES)} "
                "(best-val keeps the round with the best pooled validation Dice / AUC, last the final round)"
            )
        _range("debug-stop-after-round", self.debug_stop_after_round, 0, 1_000_000)
        if not self.dp_clipping_norm > 0:
            raise ConfigError(f"dp-clipping-norm={self.dp_clipping_norm!r}: expected a value > 0")
        if not self.dp_noise_multiplier > 0:
            raise ConfigError(f"dp-noise-multiplier={self.dp_noise_multiplier!r}: expected a value > 0")
        _range("dp-noise-multiplier", self.dp_noise_multiplier, 0.0, 1000.0)
        _range("secure-aggregation-clip", self.secure_aggregation_clip, 1e-6, 1e6)
        if not 0.0 < self.secure_aggregation_threshold <= 1.0:
            raise ConfigError(
                f"secure-aggregation-threshold={self.secure_aggregation_threshold!r} is out of range: expected a "
                "share of the round's sites in (0, 1] (at least 2 sites are always needed to unmask)"
            )

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path.home() / "nasofl-out"

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else self.out_path / "checkpoints"

    @property
    def eval_only_names(self) -> frozenset[str]:
        return frozenset(s.strip() for s in self.eval_only_sites.split(",") if s.strip())

    def to_mapping(self) -> dict[str, bool | int | float | str]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def _range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{key}={value!r} is out of range: expected a value in [{lo}, {hi}]")


def federation_keys() -> dict[str, type]:
    hints = {"str": str, "int": int, "float": float, "bool": bool}
    return {
        f.name.replace("_", "-"): hints[f.type] if isinstance(f.type, str) else f.type
        for f in fields(FederationConfig)
    }


def split_run_config(run_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """-> (pipeline keys, federation keys, client-only keys); an unknown key raises ConfigError naming it."""
    pipeline_known = set(pipeline_keys())
    fed_known = federation_keys()
    pipe: dict[str, Any] = {}
    fed: dict[str, Any] = {}
    client: dict[str, Any] = {}
    for key, value in run_config.items():
        if key in pipeline_known:
            pipe[key] = value
        elif key in fed_known:
            fed[key] = value
        elif key in CLIENT_KEYS:
            client[key] = value
        else:
            raise unknown_key_error(key, pipeline_known | set(fed_known) | set(CLIENT_KEYS))
    return pipe, fed, client


def federation_from_run_config(run_config: Mapping[str, Any]) -> FederationConfig:
    """Validated FederationConfig; every federation key must be present (defaults: pyproject.toml)."""
    _, fed, _ = split_run_config(run_config)
    kwargs: dict[str, Any] = {}
    for key, typ in federation_keys().items():
        if key not in fed:
            raise ConfigError(
                f"run config lacks key {key!r}: add it to [tool.flwr.app.config] in pyproject.toml or pass "
                f"--run-config '{key}=...'"
            )
        kwargs[key.replace("-", "_")] = coerce(key, fed[key], typ)
    return FederationConfig(**kwargs)


def pipeline_from_run_config(run_config: Mapping[str, Any]) -> PipelineConfig:
    pipe, _, _ = split_run_config(run_config)
    return PipelineConfig.from_mapping(pipe)


def settings_fingerprint(fed: FederationConfig, cfg: PipelineConfig) -> str:
    """SHA-256 of everything that changes the trained weights (not paths, timeouts, resume or debug keys)."""
    keep = {
        k: v
        for k, v in fed.to_mapping().items()
        if k
        not in (
            "out-dir",
            "checkpoint-dir",
            "resume",
            "round-timeout-s",
            "wait-for-sites-s",
            "debug-stop-after-round",
        )
    }
    blob = json.dumps({"pipeline": cfg.to_mapping(), "federation": keep}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
