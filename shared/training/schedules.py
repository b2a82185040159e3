"""Learning-rate schedule and the FedProx proximal term shared by both training loops."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def _warmup(step: int, total: int, warmup_fraction: float) -> tuple[int, float | None]:
    """``(warm-up steps, the linear warm-up's factor at step)``; the factor is None once the warm-up is over."""
    warm = int(round(warmup_fraction * total))
    return warm, ((step + 1) / (warm + 1) if warm > 0 and step < warm else None)


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up over ``warmup_fraction`` of the steps, then cosine
    decay to 0 at ``total_steps``. Returns a float in [0, 1]."""
    total = max(1, total_steps)
    warm, rising = _warmup(step, total, warmup_fraction)
    if rising is not None:
        return rising
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


#: ``seg-lr-schedule = "warmup"``: the share of the stage's steps with a linear warm-up (then constant)
SEG_WARMUP_FRACTION = 0.1


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base lr under ``schedule``: ``"constant"`` 1, ``"cosine"`` cosine decay to 0 at
    ``total_steps`` (no warm-up), ``"warmup"`` a linear warm-up over the first :data:`SEG_WARMUP_FRACTION` of
    ``total_steps``, then 1. Raises ValueError on another name (the config validates it first)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return warmup_cosine(step, total_steps, 0.0)
    if schedule == "warmup":
        _, rising = _warmup(step, max(1, total_steps), SEG_WARMUP_FRACTION)
        return 1.0 if rising is None else rising
    raise ValueError(f"lr schedule {schedule!r} is unknown: expected constant, cosine or warmup")


def adam(params, lr: float, state: Mapping[str, Any] | None = None) -> torch.optim.Adam:
    """Adam at ``lr``; with ``state`` (an earlier Adam's ``state_dict`` on the same parameters) its moments and
    step counts continue, at this call's ``lr``."""
    return _continued(torch.optim.Adam(params, lr=lr), lr, state)


def adamw(params, lr: float, weight_decay: float, state: Mapping[str, Any] | None = None) -> torch.optim.AdamW:
    """AdamW at ``lr`` and ``weight_decay``; ``state`` (an earlier AdamW's ``state_dict``) as in :func:`adam`.
    ``params`` may be groups with an ``lr_scale`` (:func:`shared.models.linear_member.param_groups`): such a
    group's lr is ``lr_scale`` x ``lr``."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    opt = _continued(opt, lr, state)
    for group in opt.param_groups:
        group["weight_decay"] = weight_decay
    return opt


def _continued(opt, lr: float, state: Mapping[str, Any] | None):
    """``opt`` with ``state``'s moments and step counts loaded, its lr (and the scheduler's base lr) ``lr``."""
    if state is not None:
        opt.load_state_dict(state)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = lr * group.get("lr_scale", 1.0)
    return opt


def snapshot_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters (the "global" model for FedProx)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def prox_term(model: nn.Module, global_params: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx proximal term ``mu/2 · Σ ||w − w_global||²`` over parameters present in ``global_params``."""
    total = None
    for name, p in model.named_parameters():
        ref = global_params.get(name)
        if ref is None or not p.requires_grad:
            continue
        d = (p - ref.to(p.device, p.dtype)).pow(2).sum()
        total = d if total is None else total + d
    if total is None:
        return torch.zeros(())
    return 0.5 * mu * total
