"""The two local training loops under DP-SGD (:mod:`shared.privacy.dp_sgd`), patient as the unit.

Same data as the non-DP loops (``shared.training``): the segmenter's slices of :class:`SegSliceDataset`
(each patient's candidate slices, two thirds with tumour), the classifier's ROI crops; only the sampling (one
slice per Poisson-sampled patient), the loss (per-slice) and the optimiser step (Opacus) differ.
Both need a DP-compatible model (``build_*(..., dp=True)``: GroupNorm, out-of-place residuals).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.config import PipelineConfig
from shared.data.patient import PatientVolumes
from shared.privacy.dp_sgd import DPPlan, DPStats, per_sample_seg_loss, run_dp_sgd
from shared.roi.datasets import RoiDataset
from shared.training.augment import augment_batch, augment_pairs
from shared.training.classification import smoothed_bce
from shared.training.device import TrainStats, place_batch, place_model
from shared.training.schedules import adam, adamw, lr_factor
from shared.training.seg_dataset import SegSliceDataset

log = logging.getLogger(__name__)


def _stats(dp: DPStats, epochs: int) -> TrainStats:
    if not dp.losses:
        return TrainStats(float("nan"), float("nan"), float("nan"), dp.n_examples, dp.seconds, epochs)
    return TrainStats(
        dp.losses[0], dp.losses[-1], float(np.mean(dp.losses)), dp.n_examples, dp.seconds, epochs
    )


def seg_training_patients(patients: list[PatientVolumes], cfg: PipelineConfig) -> int:
    """How many patients the DP segmenter loop samples from (mask and the segmenter's sequences)."""
    return sum(1 for p in patients if p.mask is not None and p.has(*cfg.seg.in_sequences))


def train_segmenter_dp(
    model: nn.Module,
    patients: list[PatientVolumes],
    cfg: PipelineConfig,
    device: torch.device,
    plan: DPPlan,
    epoch: int,
    total_epochs: int | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    keep_optimizer_state: Callable[[dict[str, Any]], None] | None = None,
) -> TrainStats:
    """One round of DP-SGD on the segmenter; ``epoch`` picks the candidate slices.

    Adam at ``cfg.seg.lr`` times the ``seg-lr-schedule`` factor at the start of ``epoch`` of ``total_epochs``
    (constant within the round: the DP plan's steps do not map onto epochs). ``optimizer_state`` /
    ``keep_optimizer_state`` as in :func:`shared.training.segmentation.train_segmenter`: Adam's moments are
    computed from the clipped, noised gradients, so carrying them costs no privacy (post-processing)."""
    ds = SegSliceDataset(
        patients, cfg.seg.in_sequences, cfg.seg.image_size, cfg.seg.slices_per_patient, seed=cfg.seed
    )
    if ds.n_patients == 0:
        raise ValueError("no patient has a tumour mask and the segmenter's sequences: nothing to train on")
    ds.resample(epoch)
    slices: list[list[int]] = [[] for _ in range(ds.n_patients)]
    for k, (i, _z) in enumerate(ds.index):
        slices[i].append(k)
    place_model(model, device).train()
    lr = cfg.seg.lr * lr_factor(cfg.seg.lr_schedule, epoch, max(total_epochs or 0, epoch + 1))
    opt = adam(model.parameters(), lr, optimizer_state)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 2)

    def batch_of(picks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [ds[k] for k in picks]
        x = torch.stack([a for a, _ in items])
        y = torch.stack([b for _, b in items])
        x, y = augment_pairs(x, y, cfg.seg.augment_ops, aug_gen)  # per sample: DP unit unchanged
        return place_batch(x, device), y.to(device)

    def loss_of(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_sample_seg_loss(output.float(), y, cfg.seg.loss)

    stats = run_dp_sgd(model, opt, slices, batch_of, loss_of, plan)
    if keep_optimizer_state is not None:
        keep_optimizer_state(opt.state_dict())
    log.info(
        "segmenter DP-SGD: %s steps, q %.3f, noise %.3f, %s noise-only steps",
        plan.steps,
        plan.sample_rate,
        plan.noise_multiplier,
        stats.empty_steps,
    )
    return _stats(stats, 1)


def train_classifier_dp(
    model: nn.Module,
    ds: RoiDataset,
    cfg: PipelineConfig,
    device: torch.device,
    plan: DPPlan,
    optimizer_state: Mapping[str, Any] | None = None,
    keep_optimizer_state: Callable[[dict[str, Any]], None] | None = None,
) -> TrainStats:
    """One round of DP-SGD on the classifier (AdamW at a constant ``cfg.cls.lr``; no warm-up under DP).
    ``optimizer_state`` / ``keep_optimizer_state`` as in :func:`train_segmenter_dp` (moments of noised
    gradients: post-processing)."""
    if len(ds) == 0:
        raise ValueError(f"dataset {ds.name!r} has no ROI slices to train on")
    slices: list[list[int]] = [[] for _ in range(len(ds.patients))]
    for k, i in enumerate(ds.slice_patient):
        slices[int(i)].append(k)
    slices = [s for s in slices if s]
    place_model(model, device).train()
    opt = adamw(model.parameters(), cfg.cls.lr, cfg.cls.weight_decay, optimizer_state)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7)

    def batch_of(picks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment_batch(ds.images[picks], cfg.cls.augment_ops, aug_gen)  # per-sample: DP unit unchanged
        y = torch.tensor([float(ds.labels[int(ds.slice_patient[k])]) for k in picks])
        return place_batch(x, device), y.to(device)

    def loss_of(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return smoothed_bce(output.float().squeeze(1), y, cfg.cls.label_smoothing)

    stats = run_dp_sgd(model, opt, slices, batch_of, loss_of, plan)
    if keep_optimizer_state is not None:
        keep_optimizer_state(opt.state_dict())
    return _stats(stats, 1)
