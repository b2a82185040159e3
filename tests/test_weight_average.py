"""``seg-weight-ema``: the segmenter's weights averaged over epochs (pooled) and rounds (federated, the coordinator's).

What is validated, selected and kept is the average; training goes on from the un-averaged weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import simulations.centralized as centralized
from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.training.weight_average import WeightAverage
from simulations.toy_patients import make_toy_cohort

torch.set_num_threads(1)


def test_the_average_starts_at_the_first_model_then_mixes_by_the_decay_and_keeps_dtypes():
    avg = WeightAverage(0.75)
    first = {"w": np.array([4.0, 8.0], np.float32), "n": np.array(3, np.int64)}
    out = avg.update(first)
    assert np.array_equal(out["w"], first["w"]) and out["w"] is not first["w"]
    out = avg.update({"w": np.array([8.0, 0.0], np.float32), "n": np.array(5, np.int64)})
    assert out["w"].tolist() == [5.0, 6.0]  # 0.75 x old + 0.25 x new
    assert out["w"].dtype == np.float32
    assert int(out["n"]) == 5 and out["n"].dtype == np.int64  # a counter takes the newest value
    half = WeightAverage(0.5, {"w": np.array([1.0], np.float16)})
    assert half.update({"w": np.array([3.0], np.float16)})["w"].tolist() == [2.0]
    with pytest.raises(ValueError, match="arrays differ"):
        avg.update({"w": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="'w' has shape"):
        avg.update({"w": np.zeros(3, np.float32), "n": np.array(1)})
    with pytest.raises(ValueError, match=r"expected a value in \(0, 1\)"):
        WeightAverage(1.0)


def test_seg_weight_ema_is_a_setting_with_a_range_named_in_its_error():
    assert PipelineConfig.defaults().seg.weight_ema == 0.0
    assert PipelineConfig.defaults({"seg-weight-ema": 0.8}).seg.weight_ema == 0.8
    with pytest.raises(
        ConfigError, match=r"seg-weight-ema=1\.0 is out of range: expected a value in \[0\.0, 0\.99\]"
    ):
        PipelineConfig.defaults({"seg-weight-ema": 1.0})


def test_the_pooled_segmenter_validates_and_keeps_the_average_of_its_epochs(monkeypatch):
    cfg = PipelineConfig.defaults(
        {
            "seg-image-size": 32,
            "seg-batch-size": 8,
            "seg-slices-per-patient": 4,
            "seg-lr": 3e-3,
            "seg-epochs": 3,
            "seg-augment": "none",
            "seg-weight-ema": 0.5,
        }
    )
    patients = make_toy_cohort(10, size=32, depth=6)
    seen: list[dict[str, np.ndarray]] = []  # each epoch's trained (un-averaged) weights
    evaluated: list[dict[str, np.ndarray]] = []  # the weights each validation pass read
    real_train, real_eval = centralized.train_segmenter, centralized.evaluate_segmenter

    def observed_train(model, *args, on_epoch_end, **kwargs):
        def hook(epoch, loss):
            seen.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
            on_epoch_end(epoch, loss)

        return real_train(model, *args, on_epoch_end=hook, **kwargs)

    def observed_eval(model, patients, *args, **kwargs):
        if patients and patients[0].split == "val":
            evaluated.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
        return real_eval(model, patients, *args, **kwargs)

    monkeypatch.setattr(centralized, "train_segmenter", observed_train)
    monkeypatch.setattr(centralized, "evaluate_segmenter", observed_eval)
    model, summary = centralized.run_segmentation_stage(patients, cfg, torch.device("cpu"), False)
    assert len(seen) == len(evaluated) == 3
    name = next(k for k, v in seen[0].items() if v.dtype == np.float32 and "running" not in k)
    expected = [seen[0][name]]
    for epoch in seen[1:]:
        expected.append((0.5 * expected[-1].astype(np.float64) + 0.5 * epoch[name]).astype(np.float32))
    for got, want in zip(evaluated, expected, strict=True):
        np.testing.assert_array_equal(got[name], want)
    assert not np.array_equal(evaluated[2][name], seen[2][name])  # the average, not the trained weights
    kept = summary["selected_epoch"] - 1
    np.testing.assert_array_equal(model.state_dict()[name].numpy(), expected[kept])


def test_a_checkpoint_without_the_average_is_refused_on_resume_naming_what_it_lacks():
    from server.round_average import AVERAGE, KEPT_AVERAGE, RoundAverage, split_state

    model = {"w": np.ones(2, np.float32)}
    own, parts = split_state({"momentum": model, AVERAGE: model, KEPT_AVERAGE: model})
    assert set(own) == {"momentum"} and set(parts) == {AVERAGE, KEPT_AVERAGE}
    kept = RoundAverage(0.5).resume(parts)
    np.testing.assert_array_equal(kept["w"], model["w"])
    with pytest.raises(
        ValueError, match="checkpoint lacks seg-weight-ema-kept: it was written without the average"
    ):
        RoundAverage(0.5).resume({AVERAGE: model})
