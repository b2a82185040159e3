"""Stage 1 local loops: one training call of the U-Net, evaluation into Dice sums, mask prediction.

Used by the hospital ClientApp and by the centralized baseline alike (same code, fair comparison).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from shared.config import PipelineConfig
from shared.data.patient import PatientVolumes
from shared.metrics.dice import dice_from_sums, overlap_sums
from shared.training.augment import augment_pairs
from shared.training.device import TrainStats, autocast_for, place_batch, place_model
from shared.training.schedules import adam, lr_factor, prox_term, snapshot_params
from shared.training.seg_dataset import SegSliceDataset, patient_input, resize_slices

log = logging.getLogger(__name__)


@dataclass
class DiceSums:
    """Sufficient statistics of Dice over patients with masks. ``per_patient`` stays on site (never sent)."""

    intersection: int = 0
    pred_sum: int = 0
    true_sum: int = 0
    n_patients: int = 0
    per_patient: list[float] = field(default_factory=list)

    @property
    def dice(self) -> float:
        return dice_from_sums(self.intersection, self.pred_sum, self.true_sum)

    def as_metrics(self) -> dict[str, int | float]:
        """MetricRecord-safe sums (no per-patient values)."""
        return {
            "dice_intersection": int(self.intersection),
            "dice_pred_sum": int(self.pred_sum),
            "dice_true_sum": int(self.true_sum),
            "dice_n_patients": int(self.n_patients),
        }


def segmentation_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(logits (B,1,H,W), target (B,1,H,W) in {0,1}) -> scalar``; ``"dice"`` or ``"dice+bce"``."""
    dice = DiceLoss(mode="binary", from_logits=True)
    if kind == "dice":
        return dice
    return lambda logits, target: dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


def train_segmenter(
    model: nn.Module,
    patients: Sequence[PatientVolumes],
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
    """Train ``model`` in place on slices of ``patients`` that have a mask and the segmenter's sequences.

    Adam at ``cfg.seg.lr``; with ``seg-lr-schedule = "cosine"`` the lr decays to 0 over ``total_epochs``
    (default ``start_epoch + epochs``) and this call runs epochs ``start_epoch .. start_epoch + epochs − 1`` of
    it, so federated rounds share one schedule. ``optimizer_state`` (an Adam ``state_dict`` of an earlier call on
    the same architecture) continues Adam's moments instead of starting fresh; ``keep_optimizer_state`` receives
    the final one (``seg-local-optimizer = "keep"``). ``prox_mu > 0`` adds FedProx's ``mu/2·||w − w_global||²`` (``global_params`` default:
    the weights at entry). ``on_epoch_end(epoch, mean_loss)`` is called after each epoch (model selection).
    Raises ValueError when no patient has a mask.
    """
    t0 = time.perf_counter()
    ds = SegSliceDataset(
        patients, cfg.seg.in_sequences, cfg.seg.image_size, cfg.seg.slices_per_patient, seed=cfg.seed
    )
    if ds.n_patients == 0:
        raise ValueError(
            f"no patient among {len(patients)} has a tumour mask and the sequences {cfg.seg.in_sequences}: "
            "the segmenter needs masked patients (RTSTRUCT or SEG) to train"
        )
    place_model(model, device).train()
    if prox_mu > 0 and global_params is None:
        global_params = snapshot_params(model)
    loss_fn = segmentation_loss(cfg.seg.loss)
    opt = adam(model.parameters(), cfg.seg.lr, optimizer_state)
    total_epochs = max(total_epochs or 0, start_epoch + epochs)
    steps_per_epoch = len(ds) // cfg.seg.batch_size if len(ds) > cfg.seg.batch_size else 1  # as the loader's drop_last
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: lr_factor(cfg.seg.lr_schedule, s + start_epoch * steps_per_epoch, total_epochs * steps_per_epoch),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + start_epoch + 2)
    ops = cfg.seg.augment_ops
    losses: list[float] = []
    n_examples = 0
    for epoch in range(start_epoch, start_epoch + epochs):
        ds.resample(epoch)
        loader = DataLoader(
            ds,
            batch_size=cfg.seg.batch_size,
            shuffle=True,
            generator=gen,
            drop_last=len(ds) > cfg.seg.batch_size,
        )
        epoch_losses: list[float] = []
        for x, y in tqdm(loader, desc=f"seg epoch {epoch + 1}", disable=not progress, leave=False):
            x, y = augment_pairs(x, y, ops, aug_gen)
            x, y = place_batch(x, device), y.to(device)
            with autocast_for(device, cfg.amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            if prox_mu > 0 and global_params is not None:
                loss = loss + prox_term(model, global_params, prox_mu)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            epoch_losses.append(float(loss.detach()))
            n_examples += len(x)
        losses += epoch_losses
        mean = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
        log.info("segmenter epoch %s: loss %.4f over %s slices", epoch + 1, mean, len(ds))
        if on_epoch_end is not None:
            on_epoch_end(epoch, mean)
            model.train()
    if keep_optimizer_state is not None:
        keep_optimizer_state(opt.state_dict())
    seconds = time.perf_counter() - t0
    if not losses:
        return TrainStats(float("nan"), float("nan"), float("nan"), 0, seconds, epochs)
    return TrainStats(losses[0], losses[-1], float(np.mean(losses)), n_examples, seconds, epochs)


@torch.no_grad()
def predict_volume(
    model: nn.Module, p: PatientVolumes, cfg: PipelineConfig, device: torch.device
) -> np.ndarray:
    """uint8 ``(Z, H, W)`` predicted tumour mask on the patient's grid (logits resized back, threshold 0)."""
    place_model(model, device).eval()
    vol = torch.from_numpy(patient_input(p, cfg.seg.in_sequences))
    h, w = vol.shape[-2:]
    out = []
    for start in range(0, vol.shape[0], 32):
        x = place_batch(resize_slices(vol[start : start + 32], cfg.seg.image_size), device)
        with autocast_for(device, cfg.amp):
            logits = model(x).float()
        if (h, w) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        out.append((logits[:, 0] > 0).to(torch.uint8).cpu())
    return torch.cat(out).numpy()


def predict_masks(
    model: nn.Module,
    patients: Sequence[PatientVolumes],
    cfg: PipelineConfig,
    device: torch.device,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """pseudonym -> uint8 ``(Z, H, W)`` mask for every patient having ``cfg.seg.in_sequences`` (others absent)."""
    out: dict[str, np.ndarray] = {}
    for p in tqdm(patients, desc="predict masks", disable=not progress, leave=False):
        if p.has(*cfg.seg.in_sequences):
            out[p.pseudonym] = predict_volume(model, p, cfg, device)
    return out


def evaluate_segmenter(
    model: nn.Module, patients: Sequence[PatientVolumes], cfg: PipelineConfig, device: torch.device
) -> DiceSums:
    """3-D Dice sums over patients with a mask and the segmenter's sequences (others are skipped)."""
    sums = DiceSums()
    for p in patients:
        if p.mask is None or not p.has(*cfg.seg.in_sequences):
            continue
        pred = predict_volume(model, p, cfg, device)
        inter, ps, ts = overlap_sums(pred, p.mask)
        sums.intersection += inter
        sums.pred_sum += ps
        sums.true_sum += ts
        sums.n_patients += 1
        sums.per_patient.append(dice_from_sums(inter, ps, ts))
    return sums
