"""DP-SGD with the PATIENT as the privacy unit (Opacus' per-sample clipping and noise, our own sampler).

A patient has many slices; an epsilon per slice printed as if per patient would be a defect. So every step:

1. each training patient is taken independently with probability ``q`` (Poisson sampling, what the accountant
   assumes), ``q = min(1, batch size / patients)``;
2. ONE slice is drawn from each sampled patient (the rest of the patient's slices are not used in that step);
3. each slice's gradient (= the patient's) is clipped to ``dp-max-grad-norm`` (by default from per-sample
   gradient norms and a second, clip-weighted backward pass: :mod:`shared.privacy.ghost_clipping`; or Opacus'
   per-sample gradients), and Opacus adds Gaussian noise of std ``noise x max-grad-norm``; a step with no
   patient sampled is a noise-only step (it still counts).

The loss must be a mean of per-sample losses (a batch Dice would couple patients): :func:`per_sample_seg_loss`.
One round runs ``epochs x round(1/q)`` steps; the noise multiplier is chosen once per stage so that the stage's
rounds spend ``dp-epsilon`` (:func:`plan_stage`), identical at every round, so a fresh process finds it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.privacy.accounting import Release, noise_for_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPPlan:
    """One round of DP-SGD at a site."""

    sample_rate: float
    noise_multiplier: float
    steps: int
    expected_batch: int
    max_grad_norm: float

    @property
    def release(self) -> Release:
        return Release(self.noise_multiplier, self.sample_rate, self.steps)


def plan_stage(
    n_patients: int,
    batch_size: int,
    epochs: int,
    stage_rounds: int,
    target_epsilon: float,
    delta: float,
    max_grad_norm: float,
    accountant: str,
) -> DPPlan:
    """The per-round plan whose ``stage_rounds`` rounds together spend ``target_epsilon`` at ``delta``."""
    if n_patients < 1:
        raise ValueError("DP-SGD needs at least one training patient")
    q = min(1.0, batch_size / n_patients)
    steps = max(1, round(1.0 / q)) * max(1, epochs)
    sigma = noise_for_target(target_epsilon, delta, q, steps * max(1, stage_rounds), accountant)
    return DPPlan(q, sigma, steps, max(1, round(q * n_patients)), max_grad_norm)


def per_sample_seg_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over the batch of per-slice losses: soft Dice per slice (+ BCE for ``"dice+bce"``).

    ``logits``/``target`` ``(B, 1, H, W)``; returns a scalar. Unlike a batch Dice, slice i's term depends on
    slice i only, which per-sample clipping requires.
    """
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    inter = (prob * tgt).sum(1)
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum(1) + tgt.sum(1) + 1.0)
    if kind == "dice":
        return dice.mean()
    bce = F.binary_cross_entropy_with_logits(logits.flatten(1), tgt, reduction="none").mean(1)
    return (dice + bce).mean()


@dataclass
class DPStats:
    losses: list[float]
    n_examples: int
    empty_steps: int
    seconds: float


ENGINES = ("ghost", "hooks")


def run_dp_sgd(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    slices_of_patient: Sequence[Sequence[int]],
    batch_of: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    plan: DPPlan,
    after_step: Callable[[], None] | None = None,
    engine: str = "ghost",
) -> DPStats:
    """``plan.steps`` DP-SGD steps on ``model`` in place.

    ``slices_of_patient[i]``: the slice indices patient i may contribute; ``batch_of(slice indices)`` returns the
    batch ``(x, y)`` on the model's device; ``loss_of(output, y)`` the mean over the batch of per-sample losses
    of the model's output. ``engine``: how each patient's gradient is clipped to ``plan.max_grad_norm``, with the
    same result: ``"ghost"`` (default; per-sample norms, then a backward pass of the clip-weighted loss:
    :mod:`shared.privacy.ghost_clipping`; 1.5-1.9x a non-DP step on a CPU, PRIVACY.md) or ``"hooks"`` (Opacus'
    per-sample gradients, all kept at once: 2.3-6.5x). The noise, sampling and accounting do not depend on it.

    The sampling and the noise draw from the operating system's entropy, never from the study seed: the seed
    travels in the run config, and whoever knows it could regenerate the noise and subtract it (and knowing which
    patients were sampled voids the amplification by sampling). DP training is therefore not reproducible.
    """
    if engine not in ENGINES:
        raise ValueError(f"DP-SGD engine {engine!r}: expected one of {ENGINES}")
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    from shared.privacy.ghost_clipping import clipped_backward, register_conv_norm_sampler

    t0 = time.perf_counter()
    rng = np.random.default_rng()  # OS entropy
    device = next(model.parameters()).device
    noise_gen = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))
    ghost = engine == "ghost"
    if ghost:
        register_conv_norm_sampler()
        gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=plan.max_grad_norm)
    else:
        gsm = GradSampleModule(model)
    dp_opt = (DPOptimizerFastGradientClipping if ghost else DPOptimizer)(
        optimizer,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.expected_batch,
        generator=noise_gen,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    stats = DPStats([], 0, 0, 0.0)
    n = len(slices_of_patient)
    try:
        gsm.train()
        for _ in range(plan.steps):
            chosen = np.nonzero(rng.random(n) < plan.sample_rate)[0]
            dp_opt.zero_grad(set_to_none=True)
            if len(chosen) == 0:
                for p in params:  # noise-only step: a zero (clipped) gradient sum, plus the noise
                    if ghost:
                        p.grad = torch.zeros_like(p)
                    else:
                        p.grad_sample = torch.zeros((1, *p.shape), device=p.device, dtype=p.dtype)
                stats.empty_steps += 1
            else:
                picks = [int(rng.choice(slices_of_patient[i])) for i in chosen]
                x, y = batch_of(picks)
                if ghost:
                    loss = clipped_backward(gsm, x, lambda out, y=y: loss_of(out, y))
                else:
                    loss = loss_of(gsm(x), y)
                    loss.backward()
                stats.losses.append(float(loss.detach()))
                stats.n_examples += len(picks)
            dp_opt.step()
            if after_step is not None:
                after_step()
    finally:
        gsm.remove_hooks()  # `model` is a plain module again: no hooks, no per-sample attributes
        gsm.cleanup()
        for p in params:
            if hasattr(p, "summed_grad"):
                del p.summed_grad
    stats.seconds = time.perf_counter() - t0
    return stats
