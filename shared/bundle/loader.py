"""Load a model bundle for inference, refusing anything that is not exactly what a study wrote.

Checks, in order: the manifest (format, version, every file's SHA-256), the settings (every key known to this
nasofl and none missing, values valid, ingestion version equal, fingerprint equal to the manifest's), then each
state dict against the architecture the settings build (same keys, same shapes, strict load). A failure raises
:class:`~shared.errors.BundleError` or :class:`~shared.errors.ModelMismatchError` naming the file and what differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.bundle.manifest import settings_fingerprint, verify_manifest
from shared.config import PipelineConfig, pipeline_keys
from shared.data.settings import INGEST_VERSION, IngestSettings
from shared.errors import BundleError, ConfigError, ModelMismatchError
from shared.models import build_classifier, build_segmenter


@dataclass
class ModelBundle:
    """A verified bundle. ``classifiers``: dataset name -> model (eval mode, CPU); ``card``: card.json."""

    root: Path
    cfg: PipelineConfig
    ingest: IngestSettings
    segmenter: nn.Module
    classifiers: dict[str, nn.Module]
    card: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def recommended(self) -> str | None:
        return self.card.get("recommended")

    def validation(self, dataset: str) -> dict[str, Any] | None:
        return self.card["classifiers"][dataset].get("validation")


def load_state_strict(model: nn.Module, path: Path, what: str) -> None:
    """Load ``path`` into ``model`` only when keys and shapes match exactly; else ModelMismatchError naming them."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelMismatchError(
            f"{path.name}: cannot read it as a torch state dict ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelMismatchError(f"{path.name}: expected a dict of tensors, found {type(state).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (file vs model, e.g. {shapes[:3]})")
        raise ModelMismatchError(
            f"{path.name} does not fit the {what}: "
            + "; ".join(parts)
            + ". The bundle's settings.json and its "
            "weights disagree: use the bundle exactly as the study wrote it"
        )
    model.load_state_dict(state, strict=True)
    model.eval()


#: pipeline keys added after bundles were first written, with the value that reproduces how a bundle written
#: before the key existed behaves: its absence is filled in, any other missing key still refuses the bundle.
#: cls-tta: such bundles scored each slice once; seg-augment, seg-lr-schedule, seg-/cls-local-optimizer, cls-mixup:
#: training only (seg-weight-ema too: the kept weights are a plain U-Net's); seg-norm: such bundles' segmenters had BatchNorm (or GroupNorm under DP, which ``dp`` still says);
#: cls-crop-means: their heads read the pooled features alone; cls-input-norm: their stems read the crops as they are;
#: cls-ensemble: each classifier was one ResNet; cls-linear-member: nor had it a regression member.
KEYS_ADDED_SINCE: dict[str, object] = {
    "cls-tta": "none",
    "seg-augment": "none",
    "seg-lr-schedule": "constant",
    "seg-local-optimizer": "restart",
    "seg-norm": "batch",
    "seg-weight-ema": 0.0,
    "cls-local-optimizer": "restart",
    "cls-pretrain-epochs": 0,
    "cls-mixup": 0.0,
    "cls-crop-means": False,
    "cls-input-norm": "none",
    "cls-ensemble": 1,
    "cls-linear-member": False,
}


def _settings(
    root: Path, manifest: Mapping[str, Any]
) -> tuple[PipelineConfig, IngestSettings, dict[str, Any]]:
    path = root / "settings.json"
    settings = json.loads(path.read_text())
    if settings_fingerprint(settings) != manifest.get("settings_fingerprint"):
        raise BundleError(
            f"{path}: settings fingerprint differs from the manifest's; the bundle is inconsistent"
        )
    pipeline = {**KEYS_ADDED_SINCE, **settings.get("pipeline", {})}
    known = set(pipeline_keys())
    absent = sorted(known - set(pipeline))
    if absent:
        raise BundleError(
            f"{path}: pipeline settings lack {', '.join(absent)} (written by another nasofl version, "
            f"{manifest.get('code_version')!r}); use that version or re-export the bundle"
        )
    try:
        cfg = PipelineConfig.from_mapping(pipeline)
    except ConfigError as err:
        raise BundleError(f"{path}: incompatible pipeline settings: {err}") from None
    ingest = dict(settings.get("ingest", {}))
    version = ingest.pop("version", None)
    if version != INGEST_VERSION:
        raise BundleError(
            f"{path}: ingestion version {version!r}, this nasofl ingests with version {INGEST_VERSION}: the models "
            "were trained on differently ingested volumes; use the nasofl version that wrote the bundle"
        )
    try:
        ingest_settings = IngestSettings(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in ingest.items()}
        )
    except (TypeError, ConfigError) as err:
        raise BundleError(f"{path}: incompatible ingestion settings: {err}") from None
    return cfg, ingest_settings, settings


def load_bundle(path: Path) -> ModelBundle:
    """Verify and load the bundle folder ``path``. Models come back on CPU in eval mode."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {root}: not a folder; expected OUT/bundle of a finished study")
    manifest = verify_manifest(root)
    cfg, ingest, _ = _settings(root, manifest)
    card = json.loads((root / "card.json").read_text())
    segmenter = build_segmenter(cfg.seg, dp=cfg.dp_models)
    load_state_strict(
        segmenter,
        root / card["segmenter"]["file"],
        f"U-Net segmenter ({cfg.seg.encoder}, {cfg.seg.in_channels} inputs)",
    )
    # the weights origin only matters for training: inference overwrites every parameter
    cls_cfg = replace(cfg.cls, weights="random")
    classifiers: dict[str, nn.Module] = {}
    for dataset, info in card["classifiers"].items():
        if dataset not in cfg.datasets:
            raise BundleError(
                f"{root / 'card.json'}: classifier {dataset!r} is not in the settings' datasets {cfg.datasets}"
            )
        n_in = len(cfg.dataset_sequences(dataset))
        model = build_classifier(cls_cfg, n_in, dp=cfg.dp_models)
        load_state_strict(
            model, root / info["file"], f"{cfg.cls.arch} classifier with {n_in} input channel(s)"
        )
        classifiers[dataset] = model
    return ModelBundle(root, cfg, ingest, segmenter, classifiers, card, manifest)
