"""What a crop holds inside the tumour, as features per channel: the mean over its nonzero pixels (the head of
``cls-crop-means``), the median over its eroded core (the regression member of ``cls-linear-member``)."""

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


def erode(inside: torch.Tensor, px: int) -> torch.Tensor:
    """Boolean ``(..., S, S)`` masks eroded ``px`` times by a 4-neighbour cross (a pixel stays when it and its
    four neighbours are inside; beyond the crop's edge counts as outside)."""
    out = inside
    for _ in range(px):
        padded = torch.nn.functional.pad(out.float(), (1, 1, 1, 1), value=0.0) > 0
        out = (
            out
            & padded[..., :-2, 1:-1]
            & padded[..., 2:, 1:-1]
            & padded[..., 1:-1, :-2]
            & padded[..., 1:-1, 2:]
        )
    return out


def core_medians(x: torch.Tensor, erosion_px: int) -> torch.Tensor:
    """``(B, C, S, S)`` crops -> ``(B, C)``: each channel's median over its nonzero pixels eroded by ``erosion_px``
    (:func:`erode`); where erosion leaves none, over the nonzero pixels themselves; 0 where there is none at all.

    Under ``roi-context = "tumour"`` that is the tumour's core level per sequence (its rim, which mixes in the
    tissue around it, left out)."""
    x = x.float()
    inside = x != 0
    core = erode(inside, erosion_px)
    core = torch.where(core.flatten(2).any(-1)[..., None, None], core, inside)
    values = torch.where(core, x, torch.full_like(x, float("nan"))).flatten(2)
    return torch.nan_to_num(values.nanmedian(dim=-1).values, nan=0.0)
