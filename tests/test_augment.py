"""Classifier augmentation: geometry only, intensities untouched, each op reachable from cls-augment.
Segmenter augmentation: each slice and its mask move alike; intensity changes never touch the mask."""

from __future__ import annotations

import pytest
import torch

from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.training.augment import SEG_GAIN, SEG_OFFSET, augment_batch, augment_pairs


def _batch() -> torch.Tensor:
    return torch.arange(4 * 2 * 16 * 16, dtype=torch.float32).reshape(4, 2, 16, 16)


def test_no_ops_returns_the_batch_unchanged() -> None:
    x = _batch()
    assert augment_batch(x, (), torch.Generator().manual_seed(0)) is x


@pytest.mark.parametrize("op", ["flip", "rot90"])
def test_flips_and_rotations_permute_pixels_only(op: str) -> None:
    x = _batch()
    out = augment_batch(x, (op,), torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    for a, b in zip(x, out, strict=True):  # same multiset of values per channel: no intensity change
        for ca, cb in zip(a, b, strict=True):
            assert torch.equal(ca.flatten().sort().values, cb.flatten().sort().values)
    assert not torch.equal(out, x)  # with this seed at least one sample moved


def test_shift_translates_within_an_eighth_and_keeps_channels_aligned() -> None:
    x = torch.zeros(8, 2, 32, 32)
    x[:, :, 16, 16] = 1.0  # one bright pixel in both channels
    out = augment_batch(x, ("shift",), torch.Generator().manual_seed(1))
    moved = 0
    for sample in out:
        (y0, x0), (y1, x1) = (torch.nonzero(c == 1.0)[0].tolist() for c in sample)
        assert (y0, x0) == (y1, x1)  # both sequences move together
        assert abs(y0 - 16) <= 4 and abs(x0 - 16) <= 4
        moved += (y0, x0) != (16, 16)
    assert moved > 0


def test_cls_augment_is_validated_with_the_key_named() -> None:
    cfg = PipelineConfig.defaults({"cls-augment": "flip, shift"})
    assert cfg.cls.augment_ops == ("flip", "shift")
    assert PipelineConfig.defaults({"cls-augment": "none"}).cls.augment_ops == ()
    with pytest.raises(ConfigError, match="cls-augment.*'mixup'.*flip, rot90, shift"):
        PipelineConfig.defaults({"cls-augment": "flip,mixup"})


def _slices_and_masks(n: int = 8, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel 0 of each slice IS its mask (an off-centre blob away from the border), channel 1 a gradient."""
    y = torch.zeros(n, 1, side, side)
    for i in range(n):
        y[i, 0, 8 + i % 4 : 14 + i % 4, 6 : 12 + i % 3] = 1.0  # left of centre, off the border
    grad = torch.linspace(-1, 1, side).expand(side, side)
    x = torch.cat([y.clone(), grad.expand(n, 1, side, side).clone()], dim=1)
    return x, y


def test_segmenter_flip_and_shift_move_each_mask_with_its_slice() -> None:
    x, y = _slices_and_masks()
    ax, ay = augment_pairs(x, y, ("flip", "shift"), torch.Generator().manual_seed(1))
    assert ax.shape == x.shape and ay.shape == y.shape
    assert torch.equal(ax[:, :1], ay), "a mask no longer lies on its slice's tumour"
    assert not torch.equal(ay, y), "with this seed at least one pair moved"
    # flip is left-right only: each mask keeps its rows; some masks change columns (mirrored)
    fx, fy = augment_pairs(x, y, ("flip",), torch.Generator().manual_seed(1))
    assert torch.equal(fx[:, :1], fy)
    assert torch.equal(fy.sum(dim=-1), y.sum(dim=-1)), "a flip moved a mask up or down"
    mirrored = [i for i in range(len(y)) if not torch.equal(fy[i], y[i])]
    assert mirrored and all(torch.equal(fy[i], y[i].flip(-1)) for i in mirrored)


def test_segmenter_intensity_changes_the_slice_within_bounds_and_never_the_mask() -> None:
    x, y = _slices_and_masks()
    ax, ay = augment_pairs(x, y, ("intensity",), torch.Generator().manual_seed(2))
    assert torch.equal(ay, y)
    assert not torch.equal(ax, x)
    ch1 = ax[:, 1]  # gain * grad + offset: recover both per slice from the row's two ends
    gain = (ch1[:, 0, -1] - ch1[:, 0, 0]) / 2.0
    offset = (ch1[:, 0, -1] + ch1[:, 0, 0]) / 2.0
    assert bool(((gain - 1).abs() <= SEG_GAIN + 1e-6).all()) and bool((offset.abs() <= SEG_OFFSET + 1e-6).all())


def test_seg_augment_is_validated_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match="seg-augment.*'rot90' is not an augmentation"):
        PipelineConfig.defaults({"seg-augment": "flip,rot90"})
    assert PipelineConfig.defaults({"seg-augment": "flip,shift,intensity"}).seg.augment_ops == (
        "flip",
        "shift",
        "intensity",
    )
