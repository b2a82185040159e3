"""Where classifier weights come from: torchvision's ImageNet enum, a local state-dict file, or random.

The origin string (:func:`weights_origin`) is written into every result and model card, so a reader knows
whether a figure came from ImageNet initialisation (as in the seed study) or from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision import models as tvm

from shared.config import ClassifierConfig
from shared.errors import ConfigError, ModelMismatchError

log = logging.getLogger(__name__)

_ENUMS = {
    "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V2,
}


def weights_origin(cfg: ClassifierConfig) -> str:
    """Human-readable origin, e.g. ``"random (zero-init residuals)"``, ``"imagenet:ResNet101_Weights.IMAGENET1K_V2"``."""
    if cfg.weights == "random":
        return "random (zero-init residuals)"
    if cfg.weights == "imagenet":
        return f"imagenet:{type(_ENUMS[cfg.arch]).__name__}.{_ENUMS[cfg.arch].name}"
    return f"file:{Path(cfg.weights[5:]).name}"


def load_pretrained_state(cfg: ClassifierConfig) -> dict[str, torch.Tensor] | None:
    """State dict (RGB stem, 1000-class head as stored) for ``cfg.weights``, or None for random init.

    Raises ConfigError when ImageNet weights cannot be fetched (offline) or the file is unreadable, naming
    the option and the alternative.
    """
    if cfg.weights == "random":
        return None
    if cfg.weights == "imagenet":
        enum = _ENUMS[cfg.arch]
        try:
            return enum.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # URLError, OSError, hash mismatch: all mean "not available here"
            raise ConfigError(
                f"cls-weights='imagenet' failed: could not load {type(enum).__name__}.{enum.name} for cls-arch="
                f"{cfg.arch!r} ({type(err).__name__}: {err}). Offline, download the file elsewhere "
                f"({enum.url}), copy it here and set cls-weights='file:/path/to/{Path(enum.url).name}', "
                "or use cls-weights='random'."
            ) from None
    path = Path(cfg.weights[5:])
    if not path.is_file():
        raise ConfigError(f"cls-weights={cfg.weights!r}: file not found; expected a torch state dict (.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"cls-weights={cfg.weights!r}: cannot read the file as a state dict ({err})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelMismatchError(
            f"cls-weights={cfg.weights!r}: expected a dict of tensors, found {type(state)}"
        )
    return state
