"""Stage 2 local loops: training a ResNet on ROI crops, and patient-level scores.

Recipe that trains ResNet101 from random weights here (measured): AdamW, a short linear warm-up then cosine
decay, label smoothing 0.1 (targets 0.05 / 0.95), zero-init residuals (in the model builder). An ensemble
(``cls-ensemble``) trains each member on its own loss over the same batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from shared.config import PipelineConfig
from shared.models.ensemble import ClassifierEnsemble
from shared.models.linear_member import param_groups
from shared.roi.datasets import RoiDataset
from shared.training.augment import augment_batch, mixup_batch
from shared.training.device import TrainStats, autocast_for, place_batch, place_model
from shared.training.schedules import adamw, prox_term, snapshot_params, warmup_cosine

log = logging.getLogger(__name__)


def smoothed_bce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """BCE on ``logits (B,)`` with targets ``labels·(1 − s) + s/2`` (labels float 0/1)."""
    target = labels * (1.0 - smoothing) + 0.5 * smoothing
    return F.binary_cross_entropy_with_logits(logits, target)


def member_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(k, B, 1)`` logits of each member of a :class:`~shared.models.ensemble.ClassifierEnsemble`, ``(1, B, 1)``
    for a single classifier: what the training losses are taken on."""
    if isinstance(model, ClassifierEnsemble):
        return model.member_logits(x)
    return model(x)[None]


def train_classifier(
    model: nn.Module,
    ds: RoiDataset,
    cfg: PipelineConfig,
    device: torch.device,
    epochs: int,
    prox_mu: float = 0.0,
    global_params: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    start_epoch: int = 0,
    total_epochs: int | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    keep_optimizer_state: Callable[[dict[str, Any]], None] | None = None,
) -> TrainStats:
    """Train ``model`` in place on all slices of ``ds`` (use ``ds.subset("train")``).

    The lr schedule spans ``total_epochs`` (default ``start_epoch + epochs``) and this call runs epochs
    ``start_epoch .. start_epoch + epochs − 1`` of it, so federated rounds of one epoch can share one schedule.
    ``on_epoch_end(epoch, mean_loss)`` runs after each epoch (model selection on validation AUC).
    ``optimizer_state`` (an AdamW ``state_dict`` of an earlier call on the same architecture) continues AdamW's
    moments instead of starting fresh; ``keep_optimizer_state`` receives the final one (``cls-local-optimizer``).
    """
    t0 = time.perf_counter()
    if len(ds) == 0:
        raise ValueError(f"dataset {ds.name!r} has no ROI slices to train on: check the RoiReport")
    total_epochs = total_epochs or start_epoch + epochs
    place_model(model, device).train()
    if prox_mu > 0 and global_params is None:
        global_params = snapshot_params(model)
    bs = cfg.cls.batch_size
    drop_last = len(ds) > bs
    steps_per_epoch = len(ds) // bs if drop_last else 1
    total_steps = total_epochs * steps_per_epoch
    opt = adamw(param_groups(model), cfg.cls.lr, cfg.cls.weight_decay, optimizer_state)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s + start_epoch * steps_per_epoch, total_steps, cfg.cls.warmup)
    )
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + start_epoch)
    loader = DataLoader(
        ds, batch_size=bs, shuffle=True, generator=gen, drop_last=drop_last, pin_memory=device.type == "cuda"
    )
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + start_epoch + 1)
    ops = cfg.cls.augment_ops
    losses: list[float] = []
    n_examples = 0
    for epoch in range(start_epoch, start_epoch + epochs):
        epoch_losses: list[float] = []
        for x, y, _ in tqdm(loader, desc=f"{ds.name} epoch {epoch + 1}", disable=not progress, leave=False):
            x, y = mixup_batch(augment_batch(x, ops, aug_gen), y.float(), cfg.cls.mixup, aug_gen)
            x = place_batch(x, device)
            y = y.to(device, non_blocking=True)
            with autocast_for(device, cfg.amp):
                logits = member_logits(model, x)
            # cls-ensemble: the sum of the members' losses, so each member gets exactly its own gradient
            loss = sum(smoothed_bce(z.float().squeeze(1), y, cfg.cls.label_smoothing) for z in logits)
            if prox_mu > 0 and global_params is not None:
                loss = loss + prox_term(model, global_params, prox_mu)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            epoch_losses.append(float(loss.detach()) / len(logits))  # the members' mean: one model's scale
            n_examples += len(x)
        losses += epoch_losses
        mean = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
        log.info("classifier %s epoch %s/%s: loss %.4f", ds.name, epoch + 1, total_epochs, mean)
        if on_epoch_end is not None:
            on_epoch_end(epoch, mean)
            model.train()
    if keep_optimizer_state is not None:
        keep_optimizer_state(opt.state_dict())
    seconds = time.perf_counter() - t0
    return TrainStats(losses[0], losses[-1], float(np.mean(losses)), n_examples, seconds, epochs)


#: ``cls-tta = "flip"``: the views a slice is scored in (spatial dims flipped; none = the slice itself)
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@torch.no_grad()
def slice_scores(model: nn.Module, ds: RoiDataset, cfg: PipelineConfig, device: torch.device) -> np.ndarray:
    """float64 ``(N_slices,)`` probabilities of NPL, in dataset order; with ``cls-tta = "flip"`` each is the mean
    of the probabilities of the slice's four flips (:data:`FLIP_VIEWS`)."""
    place_model(model, device).eval()
    views = FLIP_VIEWS if cfg.cls.tta == "flip" else ((),)
    out: list[np.ndarray] = []
    for start in range(0, len(ds), 64):
        x = place_batch(ds.images[start : start + 64], device)
        prob = torch.zeros(len(x), dtype=torch.float64)
        for dims in views:
            with autocast_for(device, cfg.amp):
                logits = model(torch.flip(x, dims) if dims else x)
            prob += torch.sigmoid(logits.float().squeeze(1)).cpu().double()
        out.append((prob / len(views)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def patient_scores(
    model: nn.Module, ds: RoiDataset, cfg: PipelineConfig, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, labels)`` per patient of ``ds`` (order of ``ds.patients``): mean of the slice probabilities
    of NPL (float64 in [0, 1]) and the 0/1 labels (int64)."""
    s = slice_scores(model, ds, cfg, device)
    return aggregate_patient_scores(s, ds.slice_patient, len(ds.patients)), ds.labels.copy()


def aggregate_patient_scores(
    slice_prob: np.ndarray, slice_patient: np.ndarray, n_patients: int
) -> np.ndarray:
    """Mean of slice probabilities per patient ``(n_patients,)``; a patient without slices gets NaN."""
    sums = np.bincount(slice_patient, weights=slice_prob, minlength=n_patients)
    counts = np.bincount(slice_patient, minlength=n_patients)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
