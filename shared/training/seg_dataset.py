"""Slices for the segmenter: per-volume z-scoring inside the body, resizing to the segmenter's input size.

Normalisation uses the mean and std of voxels inside the body (above 5 % of the 99th percentile), so a site
that scales its intensities by any factor gives the same network input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from shared.data.normalise import body_zscore
from shared.data.patient import PatientVolumes


def resize_slices(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, size, size)``; ``mode="nearest"`` for masks."""
    if x.shape[-2:] == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def patient_input(p: PatientVolumes, sequences: Sequence[str]) -> np.ndarray:
    """``(Z, C, H, W)`` float32: the listed sequences, each body-z-scored."""
    return np.stack([body_zscore(p.images[s]) for s in sequences], axis=1)


class SegSliceDataset(Dataset):
    """Axial slices of patients with masks: items ``(image (C, S, S) float32, mask (1, S, S) float32 in {0,1})``.

    Each :meth:`resample` picks, per patient, up to ``slices_per_patient`` slices: about two thirds with tumour
    and the rest without (the segmenter must also learn to answer "nothing").
    """

    def __init__(
        self,
        patients: Sequence[PatientVolumes],
        sequences: Sequence[str],
        image_size: int,
        slices_per_patient: int,
        seed: int = 0,
    ) -> None:
        self.sequences = tuple(sequences)
        self.image_size = image_size
        self.slices_per_patient = slices_per_patient
        self.seed = seed
        self.volumes: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        for p in patients:
            if p.mask is None or not p.has(*self.sequences):
                continue
            self.volumes.append(patient_input(p, self.sequences))
            self.masks.append(np.asarray(p.mask, dtype=np.uint8))
        self.index: list[tuple[int, int]] = []
        self.resample(0)

    @property
    def n_patients(self) -> int:
        return len(self.volumes)

    def resample(self, epoch: int) -> None:
        rng = np.random.default_rng((self.seed, epoch))
        index: list[tuple[int, int]] = []
        for i, m in enumerate(self.masks):
            area = m.reshape(m.shape[0], -1).sum(axis=1)
            tumour = np.nonzero(area > 0)[0]
            empty = np.nonzero(area == 0)[0]
            n_t = min(len(tumour), max(1, int(round(self.slices_per_patient * 2 / 3))))
            n_e = min(len(empty), self.slices_per_patient - n_t)
            picks = list(rng.choice(tumour, n_t, replace=False)) if n_t else []
            picks += list(rng.choice(empty, n_e, replace=False)) if n_e else []
            index += [(i, int(z)) for z in picks]
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, z = self.index[k]
        x = torch.from_numpy(self.volumes[i][z : z + 1])
        y = torch.from_numpy(self.masks[i][z][None, None].astype(np.float32))
        return resize_slices(x, self.image_size)[0], resize_slices(y, self.image_size, "nearest")[0]
