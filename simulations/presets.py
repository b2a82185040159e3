"""Presets of the centralized baseline: what each changes in pyproject.toml's ``[tool.flwr.app.config]``.

Each preset lists only the keys whose value differs from those defaults (a test checks it).

- ``toy``: seconds, for tests (32 px, ResNet18, 1-2 epochs).
- ``default``: the seed pipeline with ResNet101 on 2 CPU cores in under 15 minutes (96 px segmenter with a
  ResNet18 encoder, 64 px ROI crops, 4 slices per patient, a few epochs).
- ``paper``: closer to the seed study (224 px inputs, ResNet34 encoder, more epochs): for a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.app_config import ConfigValue
from shared.config import PipelineConfig
from shared.errors import ConfigError

PRESETS: dict[str, dict[str, ConfigValue]] = {
    "toy": {
        "seg-image-size": 32,
        "seg-slices-per-patient": 4,
        "seg-lr": 3e-3,
        "seg-loss": "dice",
        "seg-epochs": 3,
        "seg-augment": "none",  # 3 epochs learn too little from augmented slices for the tests' masks
        "cls-arch": "resnet18",
        "cls-pretrain-epochs": 0,
        "cls-slices-per-patient": 2,
        "cls-batch-size": 8,
        "roi-margin": 2,
        "hist-bins": 100,
    },
    "default": {
        "seg-image-size": 96,
        "seg-slices-per-patient": 8,
        "seg-epochs": 15,
        "cls-image-size": 64,
        "cls-epochs": 4,
        "cls-pretrain-epochs": 0,  # 6 epochs per dataset at 64 px: past 15 min (estimated: 25 s per epoch at 32 px, 435 patients)
    },
    "paper": {
        "seg-encoder": "resnet34",
        "seg-image-size": 224,
        "seg-batch-size": 16,
        "seg-slices-per-patient": 16,
        "seg-epochs": 60,
        "cls-image-size": 224,
        "cls-slices-per-patient": 8,
        "cls-batch-size": 32,
        "cls-epochs": 20,
        "cls-pretrain-epochs": 6,
        "roi-margin": 8,
    },
}


def preset_config(name: str, overrides: Mapping[str, ConfigValue] | None = None) -> PipelineConfig:
    """PipelineConfig of preset ``name`` with optional flat-key ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is unknown: expected one of {', '.join(PRESETS)}")
    return PipelineConfig.defaults({**PRESETS[name], **(overrides or {})})
