"""Combinations of run-config keys a study refuses before it starts (``nasofl check-config``, ``nasofl-sim run``
and the ServerApp all call :func:`check_study_settings`): every message names the keys and what to set."""

from __future__ import annotations

from server.config import FederationConfig
from server.privacy import check_privacy_settings
from shared.config import PipelineConfig
from shared.errors import ConfigError


def check_pretraining_settings(fed: FederationConfig, cfg: PipelineConfig) -> None:
    """``cls-pretrain-rounds`` and ``cls-pretrain-epochs`` are on together or off together: one without the other
    would promise a pretrained backbone the study never trains."""
    rounds, epochs = fed.cls_pretrain_rounds, cfg.cls.pretrain_epochs
    if rounds > 0 and epochs == 0:
        raise ConfigError(
            f"cls-pretrain-rounds={rounds} with cls-pretrain-epochs=0: a pretraining round would train nothing; "
            "set cls-pretrain-epochs (local epochs per round, e.g. 2) or cls-pretrain-rounds=0"
        )
    if epochs > 0 and rounds == 0:
        raise ConfigError(
            f"cls-pretrain-epochs={epochs} with cls-pretrain-rounds=0: a federated study pretrains the classifier "
            "backbones in cls-pretrain-rounds rounds; set cls-pretrain-rounds (e.g. 2) or cls-pretrain-epochs=0"
        )


def check_study_settings(fed: FederationConfig, cfg: PipelineConfig) -> None:
    """Every refusal of a combination of keys (ConfigError naming them)."""
    check_privacy_settings(fed, cfg)
    check_pretraining_settings(fed, cfg)
