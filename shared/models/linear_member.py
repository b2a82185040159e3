"""``cls-linear-member = true``: a logistic regression on the tumour's core level per sequence, one more ensemble member.

The synthetic cohorts' class evidence is mostly the tumour's signal relative to the tissue around it, per sequence.
Under ``roi-intensity = "reference"`` and ``roi-context = "tumour"`` each crop holds exactly that ratio inside the
tumour and 0 outside it, so the member reads :func:`~shared.models.crop_features.core_medians` of a crop: per
sequence, the median inside the tumour eroded by :data:`EROSION_PX` crop pixels (its rim mixes in the surrounding
tissue; the median ignores the odd bright or dark pixel). Measured offline before it was built (README Results,
2026-12-05): on the seed-size cohorts 0/3/4 a logistic regression on these medians read validation T1WI+T2WI
0.891/0.889/0.899, on the tumour's plain mean 0.790/0.713/0.835. The member standardises its input with a BatchNorm
without scale or shift (running statistics: the federation averages them like any other; FedBN keeps them per
site) and reads it with one linear layer.

It trains beside the ResNets on the same batches, its own loss, its own parameters; its lr is
:data:`LR_SCALE` x ``cls-lr``, because a regression's weights must travel about 1 in a few hundred steps and AdamW
moves a weight at most about the lr per step. The ensemble scores a weighted mean of the members' probabilities:
the regression member weighs :data:`WEIGHT` of it, the ResNets share the rest equally.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.models.crop_features import core_medians
from shared.models.ensemble import members_of

#: the member's lr as a multiple of ``cls-lr`` (its parameter group carries it as ``lr_scale``)
LR_SCALE = 30.0
#: crop pixels the tumour is eroded by before its median is taken (offline, cohorts 0/3/4: 0 px validation 0.843, 1 px
#: 0.881, 2 px 0.893 for the regression alone)
EROSION_PX = 2
#: the member's share of the ensemble's probability (offline, k = 3: a quarter 0.885, a half 0.896 validation)
WEIGHT = 0.5


class CoreLevelLogistic(nn.Module):
    """``(B, C, S, S)`` crops -> ``(B, 1)`` logits of NPL: ``fc(standardised core_medians(x))``; no spatial layer,
    so Grad-CAM and contrastive pretraining leave it out (:func:`is_linear_member`)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_channels, affine=False)
        self.fc = nn.Linear(in_channels, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(core_medians(x, EROSION_PX)))


def is_linear_member(module: nn.Module) -> bool:
    return isinstance(module, CoreLevelLogistic)


def member_weights(n_resnets: int) -> list[float]:
    """Ensemble weights for ``n_resnets`` ResNets and the regression member (last): :data:`WEIGHT` for it, the rest
    shared equally."""
    return [(1.0 - WEIGHT) / n_resnets] * n_resnets + [WEIGHT]


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
