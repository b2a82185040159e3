"""Self-supervised pretraining of the classifier backbone on ROI crops, no labels needed (``cls-pretrain-epochs``).

The pretext is contrastive (NT-Xent, as in SimCLR) with one twist from the data: the two views of an example are two
*different slices of the same patient's tumour*, each flipped and rotated at random. The backbone learns to tell
patients apart by what their slices share (the tumour's intensity relative to the reference tissue, its shape and
texture) and to ignore what differs between slices of one tumour. Intensities are never changed: they are the class
evidence (:mod:`shared.training.augment`). There is no projection head: the loss acts on the L2-normalised pooled
features, so a federated round averages exactly the weights the supervised rounds start from.

Labels are never read, so patients without a diagnosis can join (hospitals have far more of those).
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
from tqdm.auto import tqdm

from shared.config import PipelineConfig
from shared.models.ensemble import ClassifierEnsemble
from shared.models.linear_member import spatial_members
from shared.roi.datasets import RoiDataset
from shared.training.augment import augment_batch
from shared.training.device import TrainStats, autocast_for, place_batch, place_model
from shared.training.schedules import adamw, warmup_cosine

log = logging.getLogger(__name__)

#: NT-Xent temperature (SimCLR's range 0.1-0.5; lower = harder negatives)
TEMPERATURE = 0.2
#: views of a patient in one epoch (two of its slices): a round's ``num-examples`` is patients x 2 x epochs
VIEWS_PER_PATIENT = 2
#: geometry of each view (intensities untouched)
VIEW_OPS: tuple[str, ...] = ("flip", "rot90")


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Contrastive loss of ``B`` positive pairs ``(z_a[i], z_b[i])`` (``(B, D)`` each), every other of the ``2B``
    embeddings a negative. Embeddings are L2-normalised here. Needs ``B >= 2``."""
    if len(z_a) < 2:
        raise ValueError(f"nt_xent needs at least 2 pairs, got {len(z_a)}")
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    sim = z @ z.T / temperature
    n = len(z_a)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def slice_pairs(slice_patient: np.ndarray, patients: np.ndarray, rng: np.random.Generator) -> tuple[list, list]:
    """Two slice indices per patient in ``patients``: distinct slices of that patient where it has two or more
    (a patient with one slice pairs it with itself; the random flips still make two views)."""
    by_patient: dict[int, list[int]] = {}
    for k, i in enumerate(slice_patient):
        by_patient.setdefault(int(i), []).append(k)
    a, b = [], []
    for i in patients:
        rows = by_patient[int(i)]
        pick = rng.choice(len(rows), size=2, replace=len(rows) < 2)
        a.append(rows[int(pick[0])])
        b.append(rows[int(pick[1])])
    return a, b


def backbone_of(model: nn.Module) -> nn.Module:
    """Every child module of a torchvision ResNet but its head ``fc``: what pretraining trains (its
    ``parameters()`` are the model's, in the model's order, without the head's); of an ensemble, every member's."""
    if isinstance(model, ClassifierEnsemble):  # cls-linear-member: the regression member has no backbone
        return nn.ModuleList(backbone_of(m) for m in spatial_members(model))
    return nn.ModuleList(child for name, child in model.named_children() if name != "fc")


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features of a torchvision ResNet (the input of its ``fc``), ``(B, D)``."""
    head = model.fc
    model.fc = nn.Identity()
    try:
        return model(x)
    finally:
        model.fc = head


def contrastive_loss(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """NT-Xent of the views ``x_a``/``x_b`` on the model's pooled features; of an ensemble, the sum over its members
    (each member learns from its own loss alone)."""
    loss = torch.zeros(())
    for member in spatial_members(model):
        feats = backbone_features(member, torch.cat([x_a, x_b]))
        loss = loss.to(feats.device) + nt_xent(feats[: len(x_a)], feats[len(x_a) :])
    return loss


def pretrain_backbone(
    model: nn.Module,
    ds: RoiDataset,
    cfg: PipelineConfig,
    device: torch.device,
    epochs: int,
    progress: bool = False,
    start_epoch: int = 0,
    total_epochs: int | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    keep_optimizer_state: Callable[[dict[str, Any]], None] | None = None,
) -> TrainStats:
    """Contrastive epochs ``start_epoch .. start_epoch + epochs - 1`` (lr schedule over ``total_epochs``) on every
    patient of ``ds`` (labels unused), in place. A batch is ``cls-batch-size`` patients, two views each; the head
    (``fc``) is not touched. ``optimizer_state`` / ``keep_optimizer_state``: AdamW's moments continued from and
    handed on (as in :func:`shared.training.classification.train_classifier`; over :func:`backbone_of`'s
    parameters). Raises ValueError when ``ds`` has fewer than two patients (no negative to contrast)."""
    t0 = time.perf_counter()
    present = np.unique(ds.slice_patient)
    if len(present) < 2:
        raise ValueError(
            f"dataset {ds.name!r} has {len(present)} patient(s) with ROI slices: contrastive pretraining needs at "
            "least 2; set cls-pretrain-epochs=0 or add patients"
        )
    total_epochs = total_epochs or start_epoch + epochs
    place_model(model, device).train()
    bs = max(2, cfg.cls.batch_size)
    steps_per_epoch = max(1, len(present) // bs)
    total_steps = total_epochs * steps_per_epoch
    opt = adamw(backbone_of(model).parameters(), cfg.cls.lr, cfg.cls.weight_decay, optimizer_state)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s + start_epoch * steps_per_epoch, total_steps, cfg.cls.warmup)
    )
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + start_epoch)
    losses: list[float] = []
    for epoch in range(start_epoch, start_epoch + epochs):
        rng = np.random.default_rng([cfg.seed, 500, epoch])
        order = rng.permutation(present)
        batches = [order[s : s + bs] for s in range(0, steps_per_epoch * bs, bs)]
        batches[-1] = order[(steps_per_epoch - 1) * bs :]  # the remainder joins the last batch
        epoch_losses: list[float] = []
        for batch in tqdm(batches, desc=f"{ds.name} pretrain {epoch + 1}", disable=not progress, leave=False):
            rows_a, rows_b = slice_pairs(ds.slice_patient, batch, rng)
            x_a = place_batch(augment_batch(ds.images[rows_a], VIEW_OPS, gen), device)
            x_b = place_batch(augment_batch(ds.images[rows_b], VIEW_OPS, gen), device)
            with autocast_for(device, cfg.amp):
                loss = contrastive_loss(model, x_a, x_b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            epoch_losses.append(float(loss.detach()) / len(spatial_members(model)))
        losses += epoch_losses
        log.info(
            "classifier %s pretraining epoch %s/%s: contrastive loss %.4f (%s patients)",
            ds.name,
            epoch + 1,
            total_epochs,
            float(np.mean(epoch_losses)),
            len(present),
        )
    if keep_optimizer_state is not None:
        keep_optimizer_state(opt.state_dict())
    seconds = time.perf_counter() - t0
    return TrainStats(
        losses[0], losses[-1], float(np.mean(losses)), VIEWS_PER_PATIENT * len(present) * epochs, seconds, epochs
    )
