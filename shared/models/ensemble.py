"""``cls-ensemble = k``: k classifiers of one architecture, scored as the mean of their NPL probabilities.

Measured before it was built (seed size, pooled T1WI+T2WI, classifiers from seeds S, S+1000, S+2000 on one
segmenter): the only change that raised validation AUC on all five cohorts (README Results). Here the members train
side by side: the same batches, each on its own loss (their sum: disjoint weights, so every member gets exactly the
gradient it would get alone), differing only in their initial weights. Member 0 is built from the caller's random
state exactly as a single classifier would be, so with the same seed it *is* the single model, step for step.

The state dict is one model's, keys ``members.<i>.<ResNet key>``: the federation averages it key by key like any
classifier, FedBN keeps its normalisation layers per site, and a bundle stores it as one file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: member i > 0 is initialised from seed ``torch.initial_seed() + MEMBER_SEED_STRIDE * i`` (the pooled runs that
#: measured the ensemble used cohort seed S and classifier seeds S + 1000 i)
MEMBER_SEED_STRIDE = 1000


class ClassifierEnsemble(nn.Module):
    """``members``: single-logit classifiers with the same input. ``forward`` returns ``(B, 1)`` float32 logits of
    the members' mean probability, so every caller of a classifier (patient scores, thresholds, Grad-CAM, the
    sites' histograms) reads the ensemble as one model. ``weights`` (positive, one per member; default equal): a
    weighted mean instead. They are settings, not trained values, so they stay out of the state dict."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        weights = [1.0] * len(members) if weights is None else list(weights)
        if len(weights) != len(members) or min(weights) <= 0:
            raise ValueError(f"ensemble weights {weights}: expected {len(members)} positive numbers")
        self.members = nn.ModuleList(members)
        total = sum(weights)
        self.log_weights = [math.log(w / total) for w in weights]

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(k, B, 1)``: each member's logits."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.member_logits(x).float()
        # logit(sum w sigmoid(z)) = log sum w sigmoid(z) - log sum w sigmoid(-z), in log space (no 0/1 clipping)
        log_w = torch.tensor(self.log_weights, dtype=z.dtype, device=z.device).view(-1, 1, 1)
        return torch.logsumexp(F.logsigmoid(z) + log_w, dim=0) - torch.logsumexp(F.logsigmoid(-z) + log_w, dim=0)


def build_ensemble(build_one: Callable[[], nn.Module], k: int) -> nn.Module:
    """``build_one()`` when ``k`` is 1, else a :class:`ClassifierEnsemble` of ``k`` of them: member 0 from the current
    random state (the single model), member i from seed ``torch.initial_seed() + MEMBER_SEED_STRIDE * i`` with the
    random state restored afterwards (what follows draws the same numbers as after a single model)."""
    first = build_one()
    if k == 1:
        return first
    members = [first]
    base = torch.initial_seed()
    for i in range(1, k):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((base + MEMBER_SEED_STRIDE * i) % 2**63)
            members.append(build_one())
    return ClassifierEnsemble(members)


def members_of(model: nn.Module) -> list[nn.Module]:
    """The members of an ensemble; ``[model]`` for a single classifier."""
    return list(model.members) if isinstance(model, ClassifierEnsemble) else [model]
