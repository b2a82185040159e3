"""The hand-over between ingestion and training: one patient's co-registered volumes.

Ingestion (``shared.data.site``) produces these from a site folder; training (``shared.training``),
the centralized run and the ClientApp consume them. Nothing here ever leaves a hospital.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

#: Sequence names used everywhere (config, results.json, datasets). Order matters for channel fusion.
SEQUENCES: tuple[str, ...] = ("t1", "t2", "t1ce")

#: Class encoding. AUC is computed with NPL as the positive class (the rarer one, as in the seed).
LABELS: dict[str, int] = {"NPC": 0, "NPL": 1}

Split = Literal["train", "val", "test"]


@dataclass
class PatientVolumes:
    """One patient, every sequence resampled onto one grid.

    Attributes:
        pseudonym: salted hash of the patient id (``shared.pseudonym``); the raw id stays in the site report.
        label: 0 = NPC, 1 = NPL, None when labels.csv has no row for the patient.
        images: sequence name (``SEQUENCES``) -> float32 array ``(Z, H, W)`` in rescaled scanner units
            (not normalised: normalisation is the model's job). Missing sequences are absent keys.
        mask: uint8 ``(Z, H, W)`` tumour mask (1 = GTV of the primary) on the same grid, or None.
        spacing_mm: voxel size ``(z, y, x)`` in mm.
        split: patient-level split, deterministic per site.
    """

    pseudonym: str
    label: int | None
    images: dict[str, np.ndarray]
    mask: np.ndarray | None
    spacing_mm: tuple[float, float, float]
    split: Split = "train"
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        first = next(iter(self.images.values()))
        return tuple(first.shape)  # type: ignore[return-value]

    def has(self, *sequences: str) -> bool:
        return all(s in self.images for s in sequences)
