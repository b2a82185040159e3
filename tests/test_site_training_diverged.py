"""A site whose local training loss is not finite sends no weights: the round fails at that site with a message
that says what to lower, instead of replying with a loss that would read as 0.0. The optimizer moments such a
round saved are not carried into the next one."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from client.handlers_seg import train_seg
from client.local_optimizer import load_optimizer_state, save_optimizer_state
from client.node_data import NodeSite, SiteData
from client.train_reply import round_figures
from shared import protocol as P
from shared.config import PipelineConfig
from shared.errors import TrainingDivergedError
from shared.models import build_segmenter
from shared.records import state_to_record
from shared.training.device import TrainStats
from simulations.toy_patients import make_toy_cohort

torch.set_num_threads(1)

CFG = PipelineConfig.defaults(
    {
        "seg-encoder": "resnet18",
        "seg-image-size": 32,
        "seg-slices-per-patient": 4,
        "seg-epochs": 1,
        "seg-augment": "none",
        "seg-local-optimizer": "keep",
        "device": "cpu",
        "amp": False,
    }
)


@pytest.mark.parametrize("field", ["mean_loss", "loss_first", "loss_last"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_round_with_a_loss_that_is_not_finite_is_refused_not_reported_as_zero(field: str, value: float) -> None:
    stats = replace(TrainStats(0.7, 0.5, 0.6, 40, 1.0, 1), **{field: value})
    with pytest.raises(TrainingDivergedError, match=r"not finite .*after 40 examples.*seg-lr / cls-lr"):
        round_figures(stats, 10)
    assert round_figures(TrainStats(0.7, 0.5, 0.6, 40, 1.0, 1), 10)[P.TRAIN_LOSS] == pytest.approx(0.6)


def test_a_call_that_saw_no_example_reports_zero_examples_and_no_dp_keys() -> None:
    """No example, no loss: weight 0 (as before); the DP keys stay the caller's (a private round spent budget)."""
    figures = round_figures(TrainStats(float("nan"), float("nan"), float("nan"), 0, 2.5, 1), 7)
    assert figures == {
        P.NUM_EXAMPLES: 0,
        P.NUM_PATIENTS: 7,
        P.TRAIN_LOSS: 0.0,
        P.TRAIN_LOSS_FIRST: 0.0,
        P.TRAIN_SECONDS: 2.5,
    }


def test_a_segmenter_round_that_diverges_sends_no_weights_and_its_moments_are_not_carried(tmp_path, caplog) -> None:
    """A global model whose head overflows (finite weights, logits out of float32's range) makes the local loss
    not finite: ``train_seg`` raises. Its saved Adam moments are not finite, so the next round starts a fresh
    Adam and says so."""
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    data = SiteData(site, make_toy_cohort(6, size=32, depth=6), None)
    torch.manual_seed(0)
    model = build_segmenter(CFG.seg)
    state = model.state_dict()
    head = [k for k in state if k.startswith("segmentation_head") and k.endswith("weight")]
    assert head, sorted(state)[-5:]
    for k in head:
        state[k] = torch.full_like(state[k], 3e38)
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    conf = {P.CFG_ROUND: 1, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 4}
    with pytest.raises(TrainingDivergedError, match="not finite"):
        train_seg(state_to_record(state), conf, data, CFG, torch.device("cpu"))

    saved = site.cache_dir / "optim" / "s1" / "seg-r1.pt"
    assert saved.exists()
    with caplog.at_level(logging.WARNING):
        assert load_optimizer_state(site.cache_dir, "s1", "seg", 2, build_segmenter(CFG.seg)) is None
    assert "not finite" in caplog.text and "fresh Adam" in caplog.text


def test_finite_moments_are_carried(tmp_path) -> None:
    """The refusal above is about the values: the same model's finite moments load."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_optimizer_state(tmp_path, "s1", "seg", 1, opt.state_dict())
    assert load_optimizer_state(tmp_path, "s1", "seg", 2, model) is not None
    state = opt.state_dict()
    state["state"][0]["exp_avg_sq"][0, 0] = np.inf
    save_optimizer_state(tmp_path, "s1", "seg", 2, state)
    assert load_optimizer_state(tmp_path, "s1", "seg", 3, model) is None
