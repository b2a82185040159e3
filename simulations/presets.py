"""Scenario presets as flat run-config mappings (the same keys Flower's run_config uses).

- ``toy``: seconds, for tests (32 px, ResNet18, 1-2 epochs).
- ``default``: the seed pipeline with ResNet101 on 2 CPU cores in under 15 minutes (96 px segmenter with a
  ResNet18 encoder, 64 px ROI crops, 4 slices per patient, a few epochs).
- ``paper``: closer to the seed study (224 px inputs, ResNet34 encoder, more epochs): for a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.config import ConfigValue, PipelineConfig
from shared.errors import ConfigError

PRESETS: dict[str, dict[str, ConfigValue]] = {
    "toy": {
        "seg-encoder": "resnet18",
        "seg-image-size": 32,
        "seg-batch-size": 8,
        "seg-slices-per-patient": 4,
        "seg-lr": 3e-3,
        "seg-epochs": 3,
        "cls-arch": "resnet18",
        "cls-image-size": 32,
        "cls-slices-per-patient": 2,
        "cls-batch-size": 8,
        "cls-epochs": 2,
        "roi-margin": 2,
        "hist-bins": 100,
    },
    "default": {
        "seg-encoder": "resnet18",
        "seg-image-size": 96,
        "seg-batch-size": 8,
        "seg-slices-per-patient": 8,
        "seg-lr": 1e-3,
        "seg-loss": "dice+bce",
        "seg-epochs": 15,
        "cls-arch": "resnet101",
        "cls-image-size": 64,
        "cls-slices-per-patient": 4,
        "cls-batch-size": 16,
        "cls-lr": 1e-3,
        "cls-warmup": 0.1,
        "cls-label-smoothing": 0.1,
        "cls-epochs": 4,
        "roi-margin": 4,
    },
    "paper": {
        "seg-encoder": "resnet34",
        "seg-image-size": 224,
        "seg-batch-size": 16,
        "seg-slices-per-patient": 16,
        "seg-loss": "dice+bce",
        "seg-epochs": 60,
        "cls-arch": "resnet101",
        "cls-image-size": 224,
        "cls-slices-per-patient": 8,
        "cls-batch-size": 32,
        "cls-lr": 1e-3,
        "cls-epochs": 20,
        "roi-margin": 8,
    },
}


def preset_config(name: str, overrides: Mapping[str, ConfigValue] | None = None) -> PipelineConfig:
    """PipelineConfig of preset ``name`` with optional flat-key ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is unknown: expected one of {', '.join(PRESETS)}")
    return PipelineConfig.from_mapping({**PRESETS[name], **(overrides or {})})
