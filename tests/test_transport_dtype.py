"""transport-dtype float16 (shared/records.py): a trained classifier and segmenter sent through it score the same
held-out patients as before, within the rounding of float16 (tests/bench_transport_dtype.py prints the figures)."""

from __future__ import annotations

import pytest
import torch

from tests.bench_transport_dtype import float16_effect

pytestmark = pytest.mark.slow


def test_float16_transport_keeps_pooled_auc_and_dice() -> None:
    torch.set_num_threads(1)
    e = float16_effect(seed=0)
    assert 0.6 < e.auc32 < 0.99 and e.dice32 > 0.5  # models that learned something, not a trivial task
    assert abs(e.auc16 - e.auc32) <= 0.005
    assert 0 < e.max_score_change < 0.01  # the weights did change (float16 rounding), the scores barely
    assert abs(e.dice16 - e.dice32) <= 0.005
