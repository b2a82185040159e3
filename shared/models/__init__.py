"""Models: the U-Net segmenter, the ResNet classifiers, weight origins and the DP-compatible variant."""

from shared.models.classifier import build_classifier
from shared.models.dp_compat import make_dp_compatible
from shared.models.segmenter import build_segmenter
from shared.models.weights import weights_origin

__all__ = ["build_classifier", "build_segmenter", "make_dp_compatible", "weights_origin"]
