"""Stage 1 model: a U-Net (segmentation-models-pytorch) predicting the primary tumour (GTVnx) mask."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from shared.config import SegmenterConfig


def build_segmenter(cfg: SegmenterConfig, dp: bool = False) -> nn.Module:
    """U-Net with ``cfg.encoder``, randomly initialised (``encoder_weights=None``: no download, ever).

    Input ``(B, len(cfg.in_sequences), H, W)`` float32, per-image z-scored, H and W multiples of 32.
    Output ``(B, 1, H, W)`` float32 logits of "tumour". ``dp=True`` or ``seg-norm = "group"`` returns the
    Opacus-compatible variant (GroupNorm, out-of-place residuals).
    """
    model = smp.Unet(
        encoder_name=cfg.encoder,
        encoder_weights=None,
        in_channels=cfg.in_channels,
        classes=1,
        activation=None,
    )
    if dp or cfg.norm == "group":
        from shared.models.dp_compat import make_dp_compatible

        model = make_dp_compatible(model)
    return model
