"""Classifier augmentation: geometry only, intensities untouched, each op reachable from cls-augment."""

from __future__ import annotations

import pytest
import torch

from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.training.augment import augment_batch


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
