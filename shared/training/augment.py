"""Geometric augmentation of classifier ROI crops, applied per sample on a batch during training.

Only geometry changes: the class evidence in these crops is the tumour's intensity relative to its
surroundings, so intensities are never rescaled. Ops (``cls-augment``, comma-separated):

- ``flip``: random left-right and up-down flips,
- ``rot90``: a random multiple of 90 degrees,
- ``shift``: a random translation of up to 1/8 of the crop side (reflect padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, ops: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """A new ``(B, C, S, S)`` batch with each sample transformed independently (draws from ``gen``, on CPU)."""
    if not ops or len(x) == 0:
        return x
    out = []
    side = x.shape[-1]
    pad = max(1, side // 8)
    for sample in x:
        if "flip" in ops:
            if torch.rand(1, generator=gen).item() < 0.5:
                sample = sample.flip(-1)
            if torch.rand(1, generator=gen).item() < 0.5:
                sample = sample.flip(-2)
        if "rot90" in ops:
            sample = torch.rot90(sample, int(torch.randint(4, (1,), generator=gen)), dims=(-2, -1))
        if "shift" in ops:
            padded = F.pad(sample[None], (pad, pad, pad, pad), mode="reflect")[0]
            dy, dx = (int(v) for v in torch.randint(2 * pad + 1, (2,), generator=gen))
            sample = padded[:, dy : dy + side, dx : dx + side]
        out.append(sample)
    return torch.stack(out)
