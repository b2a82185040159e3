"""What a crop holds inside the tumour, as features: each channel's mean over its nonzero pixels."""

from __future__ import annotations

import torch


def crop_means(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, S, S)`` crops -> ``(B, C)``: each channel's mean over its nonzero pixels (0 where none is).

    Under ``roi-context = "tumour"`` every pixel outside the tumour is exactly 0, so this is the tumour's mean
    intensity per sequence (relative to the reference tissue under ``roi-intensity = "reference"``): the
    feature a logistic regression separates NPC from NPL with."""
    x = x.float()
    inside = (x != 0).sum(dim=(2, 3)).clamp(min=1)
    return x.sum(dim=(2, 3)) / inside
