"""``cls-linear-member``: a logistic regression on the crop's tumour core level per sequence, trained and scored as
one more ensemble member weighing half the score (shared/models/linear_member.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from client.handlers_cls import evaluate_cls, train_cls
from client.node_data import NodeSite, SiteData
from client.roi_cache import roi_key, save_roi
from shared import protocol as P
from shared.bundle.loader import KEYS_ADDED_SINCE, load_state_strict
from shared.config import PipelineConfig
from shared.errors import ConfigError, ModelMismatchError
from shared.explain.gradcam import cam_layer, grad_cam
from shared.metrics.auc import auc
from shared.models import build_classifier
from shared.models.crop_features import core_medians, erode
from shared.models.ensemble import ClassifierEnsemble, members_of
from shared.models.linear_member import (
    EROSION_PX,
    LR_SCALE,
    WEIGHT,
    CoreLevelLogistic,
    param_groups,
    spatial_members,
)
from shared.records import state_to_record
from shared.roi.datasets import RoiDataset
from shared.training.classification import patient_scores, train_classifier
from shared.training.pretrain import backbone_of, pretrain_backbone
from shared.training.schedules import adamw

torch.set_num_threads(1)
CPU = torch.device("cpu")

SINGLE = PipelineConfig.defaults({"cls-arch": "resnet18", "cls-batch-size": 8, "cls-epochs": 1, "cls-lr": 0.003,
                                  "cls-local-optimizer": "restart", "cls-pretrain-epochs": 1, "amp": False})  # fmt: skip
WITH_LINEAR = replace(SINGLE, cls=replace(SINGLE.cls, linear_member=True))


def _tumour_crops(n: int, seed: int = 0, split: str = "train") -> RoiDataset:
    """``n`` patients, two 16 px slices each: the tumour (a 6 x 6 square; 0 outside it, as under roi-context =
    "tumour") brighter on T2WI for NPL, with noise; T1WI carries nothing."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    images = np.zeros((2 * n, 2, 16, 16), np.float32)
    level = np.repeat(labels, 2)[:, None, None] * 0.3 + rng.normal(0, 0.2, (2 * n, 2, 1, 1)).squeeze(-1)
    images[:, :, 5:11, 5:11] = 1.0 + level[..., None] + rng.normal(0, 0.05, (2 * n, 2, 6, 6))
    images[:, 0, 5:11, 5:11] = 1.0 + rng.normal(0, 0.2, (2 * n, 6, 6))
    return RoiDataset("t1+t2", ("t1", "t2"), images, np.repeat(np.arange(n), 2), [f"p{i}" for i in range(n)],
                      labels, [split] * n)  # fmt: skip


def _built(cfg: PipelineConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_classifier(cfg.cls, 2)


def test_core_medians_take_each_channels_median_inside_the_eroded_tumour() -> None:
    x = torch.zeros(2, 2, 8, 8)
    x[0, :, 1:7, 1:7] = torch.arange(72, dtype=torch.float32).view(2, 6, 6) + 1  # a 6 x 6 tumour
    x[0, 0, 3:5, 3:5] = 100.0  # its 2 x 2 core, after 2 px of erosion
    x[1, :, 3:5, 3:5] = 5.0  # a 2 x 2 tumour: 2 px of erosion leaves nothing, its own pixels count
    got = core_medians(x, 2)
    assert got[0, 0] == 100.0 and got[0, 1] == torch.tensor([51.0, 52.0, 57.0, 58.0]).nanmedian()
    assert torch.equal(got[1], torch.tensor([5.0, 5.0]))
    assert torch.equal(core_medians(torch.zeros(1, 2, 8, 8), 2), torch.zeros(1, 2))  # no tumour: 0, not NaN
    inside = torch.zeros(5, 5, dtype=torch.bool)
    inside[1:4, 0:4] = True  # touches the crop's left edge: beyond it counts as outside
    assert erode(inside, 1).nonzero().tolist() == [[2, 1], [2, 2]]


def test_the_member_is_a_standardised_logistic_regression_on_the_tumours_core_level() -> None:
    member = CoreLevelLogistic(2).eval()
    member.norm.running_mean.copy_(torch.tensor([1.0, 2.0]))
    member.norm.running_var.copy_(torch.tensor([4.0, 0.25]))
    with torch.no_grad():
        member.fc.weight.copy_(torch.tensor([[0.5, -1.5]]))
        member.fc.bias.fill_(0.25)
    x = _tumour_crops(3).images[:4]
    m = core_medians(x, EROSION_PX)
    expected = 0.25 + 0.5 * (m[:, 0] - 1.0) / (4.0 + 1e-5) ** 0.5 - 1.5 * (m[:, 1] - 2.0) / (0.25 + 1e-5) ** 0.5
    with torch.no_grad():
        assert torch.allclose(member(x)[:, 0], expected, atol=1e-5)
    # it starts at probability 1/2 for every crop: it joins the ensemble neutral
    assert torch.equal(CoreLevelLogistic(2).eval()(x), torch.zeros(4, 1))


def test_it_joins_after_the_resnets_without_changing_them_and_is_named_in_the_architecture() -> None:
    single, fused = _built(SINGLE), _built(WITH_LINEAR)
    assert isinstance(fused, ClassifierEnsemble)
    assert [type(m) for m in members_of(fused)][1:] == [CoreLevelLogistic] and spatial_members(fused) == [fused.members[0]]
    resnet = {k[len("members.0.") :]: v for k, v in fused.state_dict().items() if k.startswith("members.0.")}
    assert resnet.keys() == single.state_dict().keys()
    assert all(torch.equal(v, single.state_dict()[k]) for k, v in resnet.items())
    three = replace(SINGLE, cls=replace(SINGLE.cls, ensemble=3, linear_member=True))
    assert len(members_of(_built(three))) == 4
    # the score: WEIGHT x the regression's probability + the rest x the ResNets' mean probability
    model = _built(three).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    with torch.no_grad():
        model.members[3].fc.weight.fill_(2.0)
        x = torch.as_tensor(_tumour_crops(4).images)
        p = torch.sigmoid(model.member_logits(x).double())
        want = WEIGHT * p[3] + (1 - WEIGHT) * p[:3].mean(0)
        assert torch.allclose(torch.sigmoid(model(x).double()), want, atol=1e-6)
        assert not torch.allclose(want, p.mean(0), atol=1e-3)  # not the plain mean of four
    assert WITH_LINEAR.cls.architecture == (
        "resnet18 + logistic regression on the tumour's core level per sequence (ensemble: weighted mean probability)"
    )
    assert three.cls.architecture.startswith("resnet18 x 3 + logistic regression")


def test_its_parameters_train_at_the_scaled_lr_and_a_continued_optimizer_keeps_the_scale() -> None:
    fused = _built(WITH_LINEAR)
    opt = adamw(param_groups(fused), 0.003, 1e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.003, 0.003 * LR_SCALE])
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in fused.members[1].parameters()}
    again = adamw(param_groups(fused), 0.001, 1e-4, opt.state_dict())
    assert [g["lr"] for g in again.param_groups] == pytest.approx([0.001, 0.001 * LR_SCALE])
    assert len(param_groups(_built(SINGLE))) == 1


def test_trained_beside_the_resnet_it_learns_the_tumours_level_and_the_resnet_trains_as_alone() -> None:
    single, fused = _built(SINGLE), _built(WITH_LINEAR)
    train, val = _tumour_crops(24), _tumour_crops(24, seed=1, split="val")
    train_classifier(single, train, SINGLE, CPU, epochs=3)
    train_classifier(fused, train, WITH_LINEAR, CPU, epochs=3)
    for k, v in single.state_dict().items():  # each member gets its own gradient: the ResNet is the single model
        assert torch.allclose(v.float(), fused.state_dict()[f"members.0.{k}"].float(), atol=1e-6), k
    linear = fused.members[1]
    # T2WI (channel 1) carries the class: its weight is positive and clearly larger than T1WI's
    w = linear.fc.weight.detach()[0]
    assert w[1] > 0.5 and abs(float(w[0])) < float(w[1]) / 2
    assert auc(*patient_scores(linear, val, WITH_LINEAR, CPU)) > 0.9


def test_pretraining_and_grad_cam_leave_the_regression_member_out() -> None:
    single, fused = _built(SINGLE), _built(WITH_LINEAR)
    assert len(list(backbone_of(fused).parameters())) == len(list(backbone_of(single).parameters()))
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    pretrain_backbone(fused, _tumour_crops(12), WITH_LINEAR, CPU, epochs=1)
    after = fused.state_dict()
    assert not torch.equal(after["members.0.conv1.weight"], before["members.0.conv1.weight"])
    for k in ("members.1.fc.weight", "members.1.norm.running_mean", "members.1.norm.num_batches_tracked"):
        assert torch.equal(after[k], before[k]), k
    fused.eval()
    image = torch.as_tensor(_tumour_crops(2).images[1])
    name, layers = cam_layer(fused, tuple(image.shape))
    assert layers == (dict(fused.members[0].named_modules())[name],)
    assert grad_cam(fused, image, layers).shape == image.shape[1:]


def test_a_sites_round_and_a_bundle_carry_the_member_and_an_older_bundle_had_none(tmp_path) -> None:
    ds = _tumour_crops(12)
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    save_roi(site.cache_dir, roi_key("seg-hash", WITH_LINEAR), {"t1+t2": ds})
    data = SiteData(site, [], None)
    conf = {P.CFG_ROUND: 1, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 2, P.CFG_DATASET: "t1+t2",
            P.CFG_SEGMENTER_HASH: "seg-hash"}  # fmt: skip
    fused = _built(WITH_LINEAR)
    arrays, metrics = train_cls(state_to_record(fused.state_dict()), conf, data, WITH_LINEAR, CPU)
    assert {"members.1.fc.weight", "members.1.norm.running_mean"} <= set(arrays)
    assert not np.array_equal(arrays["members.1.fc.weight"], np.zeros((1, 2), np.float32))
    reply = evaluate_cls(state_to_record(fused.state_dict()), {**conf, P.CFG_SPLIT: "train"}, data, WITH_LINEAR, CPU)
    assert reply[P.NUM_PATIENTS] == 12
    path = tmp_path / "classifier_t1_t2.pt"
    torch.save(fused.state_dict(), path)
    load_state_strict(_built(WITH_LINEAR, seed=5), path, "classifier t1+t2")
    with pytest.raises(ModelMismatchError, match="unexpected key"):
        load_state_strict(_built(SINGLE), path, "classifier t1+t2")
    assert KEYS_ADDED_SINCE["cls-linear-member"] is False


@pytest.mark.parametrize("dp", ["local", "central"])
def test_differential_privacy_refuses_the_member(dp: str) -> None:
    dp_keys = {"dp": dp, "amp": False, "cls-pretrain-epochs": 0}
    with pytest.raises(ConfigError, match="set cls-linear-member=false with"):
        PipelineConfig.defaults({"cls-linear-member": True, **dp_keys})
    # with an ensemble too, one refusal names both fixes (not one per attempt)
    with pytest.raises(ConfigError, match="set cls-ensemble=1 and cls-linear-member=false with"):
        PipelineConfig.defaults({"cls-linear-member": True, "cls-ensemble": 3, **dp_keys})


def test_a_site_keeping_its_adamw_state_continues_it_with_the_members_group(tmp_path, caplog) -> None:
    """``cls-local-optimizer = "keep"``: round 2 loads round 1's two-group state (the regression member's moments
    last, as its parameters are the model's last) instead of starting a fresh AdamW."""
    keep = replace(WITH_LINEAR, cls=replace(WITH_LINEAR.cls, local_optimizer="keep"))
    ds = _tumour_crops(12)
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    save_roi(site.cache_dir, roi_key("seg-hash", keep), {"t1+t2": ds})
    data = SiteData(site, [], None)
    conf = {P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 2, P.CFG_DATASET: "t1+t2", P.CFG_SEGMENTER_HASH: "seg-hash"}
    arrays, _ = train_cls(state_to_record(_built(keep).state_dict()), {**conf, P.CFG_ROUND: 1}, data, keep, CPU)
    with caplog.at_level("WARNING"):
        train_cls(state_to_record({k: torch.as_tensor(v) for k, v in arrays.items()}), {**conf, P.CFG_ROUND: 2},
                  data, keep, CPU)  # fmt: skip
    assert not [r for r in caplog.records if "fresh Adam" in r.getMessage()]
