"""Models: the U-Net segmenter, the ResNet classifiers, weight origins and the DP-compatible variant."""

from shared.models.classifier import build_classifier
from shared.models.segmenter import build_segmenter
from shared.models.weights import weights_origin

__all__ = ["build_classifier", "build_segmenter", "weights_origin"]  # DP variant: shared.models.dp_compat
