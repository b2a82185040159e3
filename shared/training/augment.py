"""Training-time augmentation, per sample on a batch: classifier ROI crops (:func:`augment_batch`) and the
segmenter's slices with their masks (:func:`augment_pairs`).

Classifier crops: only geometry changes. The class evidence in these crops is the tumour's intensity relative to
its surroundings, so intensities are never rescaled. Ops (``cls-augment``, comma-separated):

- ``flip``: random left-right and up-down flips,
- ``rot90``: a random multiple of 90 degrees,
- ``shift``: a random translation of up to 1/8 of the crop side (reflect padding).

Mixup (``cls-mixup = a > 0``, :func:`mixup_batch`): each crop is blended with another crop of the batch, weight
``lam ~ Beta(a, a)``, and so are their labels. The class evidence here is a tumour's mean intensity relative to its
surroundings, which a blend carries linearly; it regularises a ResNet101 that otherwise fits ~1,000 training crops
by their noise. Not under DP-SGD (a blended crop carries two patients; refused in ``shared.config``).
"""

from __future__ import annotations

import numpy as np
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


#: ``seg-augment = intensity``: per sample and channel, gain in [1 - g, 1 + g] and offset in [-o, o] (z-score units)
SEG_GAIN, SEG_OFFSET = 0.1, 0.1


def augment_pairs(
    x: torch.Tensor, y: torch.Tensor, ops: tuple[str, ...], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(B, C, S, S)`` slices and ``(B, 1, S, S)`` masks, each pair transformed alike (draws from ``gen``).

    Ops (``seg-augment``): ``flip`` left-right only (a head is near-symmetric left to right, never upside down);
    ``shift`` a translation of up to 1/8 of the side (the slice's edge repeated: air at a head's border; the mask
    zero-filled); ``intensity`` a gain and offset per channel (scanner contrast; masks unchanged).
    """
    if not ops or len(x) == 0:
        return x, y
    xs, ys = [], []
    side = x.shape[-1]
    pad = max(1, side // 8)
    for image, mask in zip(x, y, strict=True):
        if "flip" in ops and torch.rand(1, generator=gen).item() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if "shift" in ops:
            dy, dx = (int(v) for v in torch.randint(2 * pad + 1, (2,), generator=gen))
            image = F.pad(image[None], (pad, pad, pad, pad), mode="replicate")[0][:, dy : dy + side, dx : dx + side]
            mask = F.pad(mask[None], (pad, pad, pad, pad))[0][:, dy : dy + side, dx : dx + side]
        if "intensity" in ops:
            c = image.shape[0]
            gain = 1.0 + SEG_GAIN * (2.0 * torch.rand(c, 1, 1, generator=gen) - 1.0)
            offset = SEG_OFFSET * (2.0 * torch.rand(c, 1, 1, generator=gen) - 1.0)
            image = image * gain + offset
        xs.append(image)
        ys.append(mask)
    return torch.stack(xs), torch.stack(ys)


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x', y')``: sample ``i`` blended with sample ``perm[i]`` of the same batch, ``lam_i ~ Beta(alpha, alpha)``
    per sample (``x (B, C, S, S)``, ``y (B,)`` float 0/1 -> soft targets). ``alpha <= 0`` or ``B < 2``: unchanged.
    Draws come from ``gen`` (CPU), so a seed reproduces them."""
    if alpha <= 0 or len(x) < 2:
        return x, y
    perm = torch.randperm(len(x), generator=gen)
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=len(x))).to(x.dtype)
    mixed_x = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    mixed_y = lam.to(y.dtype) * y + (1 - lam.to(y.dtype)) * y[perm]
    return mixed_x, mixed_y
