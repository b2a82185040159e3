"""``cls-linear-member = true``: a logistic regression on the tumour's mean per sequence, one more ensemble member.

The synthetic cohorts' class evidence is mostly the tumour's signal relative to the tissue around it, per sequence:
a logistic regression on those ratios scores about what the ResNets score (README Results, "what the data holds"),
with other errors. Under ``roi-intensity = "reference"`` and ``roi-context = "tumour"`` each crop holds exactly
those ratios inside the tumour and 0 outside it, so :func:`~shared.models.crop_features.crop_means` of a crop is the
regression's input. The member standardises it with a BatchNorm without scale or shift (running statistics: the
federation averages them like any other; FedBN keeps them per site) and reads it with one linear layer.

It trains beside the ResNets on the same batches, its own loss, its own parameters; its lr is
:data:`LR_SCALE` x ``cls-lr``, because a regression's weights must travel about 1 in a few hundred steps and AdamW
moves a weight at most about the lr per step. The ensemble scores the mean of all members' probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.models.crop_features import crop_means
from shared.models.ensemble import members_of

#: the member's lr as a multiple of ``cls-lr`` (its parameter group carries it as ``lr_scale``)
LR_SCALE = 30.0


class CropMeansLogistic(nn.Module):
    """``(B, C, S, S)`` crops -> ``(B, 1)`` logits of NPL: ``fc(standardised crop_means(x))``; no spatial layer, so
    Grad-CAM and contrastive pretraining leave it out (:func:`is_linear_member`)."""

    lr_scale = LR_SCALE

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_channels, affine=False)
        self.fc = nn.Linear(in_channels, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(crop_means(x)))


def is_linear_member(module: nn.Module) -> bool:
    return isinstance(module, CropMeansLogistic)


def spatial_members(model: nn.Module) -> list[nn.Module]:
    """The members with a backbone (the ResNets) of a classifier or ensemble: what contrastive pretraining trains
    and Grad-CAM reads; :func:`~shared.models.ensemble.members_of` without the regression member."""
    return [m for m in members_of(model) if not is_linear_member(m)]


def param_groups(model: nn.Module) -> list[dict]:
    """The classifier's parameters as AdamW groups, each with its ``lr_scale`` (:func:`shared.training.schedules.adamw`
    sets the group's lr to ``lr_scale`` x ``cls-lr``): the regression member's at :data:`LR_SCALE`, the rest at 1."""
    linear = [p for m in members_of(model) if is_linear_member(m) for p in m.parameters()]
    ids = {id(p) for p in linear}
    groups: list[dict] = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr_scale": 1.0}]
    if linear:
        groups.append({"params": linear, "lr_scale": LR_SCALE})
    return groups
