"""``cls-ensemble = k``: k ResNets trained side by side, scored as the mean of their probabilities; member 0 is the
single classifier step for step, the site's rounds and the bundle carry the ensemble as one model, Grad-CAM sums
its members' maps, and differential privacy refuses it."""

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
from shared.models import build_classifier
from shared.models.ensemble import ClassifierEnsemble, members_of
from shared.records import state_to_record
from shared.roi.datasets import RoiDataset
from shared.training.classification import train_classifier
from shared.training.pretrain import backbone_of, pretrain_backbone

torch.set_num_threads(1)
CPU = torch.device("cpu")

#: ResNet18s on 16 px crops in float32, AdamW restarted each round, one epoch of each loop
SINGLE = PipelineConfig.defaults({"cls-arch": "resnet18", "cls-batch-size": 8, "cls-epochs": 1, "cls-lr": 0.003,
                                  "cls-local-optimizer": "restart", "cls-pretrain-epochs": 1, "amp": False})  # fmt: skip
PAIR = replace(SINGLE, cls=replace(SINGLE.cls, ensemble=2))


def _patients(n: int = 12) -> RoiDataset:
    """``n`` training patients, two slices each, NPL ones brighter inside the tumour."""
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(n)]
    images = rng.normal(0, 1, (2 * n, 2, 16, 16)).astype(np.float32)
    images[:, :, 5:11, 5:11] += 1.5 * np.repeat(labels, 2)[:, None, None, None]
    return RoiDataset("t1+t2", ("t1", "t2"), images, np.repeat(np.arange(n), 2), [f"p{i}" for i in range(n)],
                      labels, ["train"] * n)  # fmt: skip


def _built(cfg: PipelineConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_classifier(cfg.cls, 2)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _member_state(state: dict, i: int) -> dict:
    prefix = f"members.{i}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def test_the_ensemble_scores_the_mean_of_its_members_probabilities_even_at_saturated_logits() -> None:
    model = _built(PAIR).eval()
    assert isinstance(model, ClassifierEnsemble) and len(members_of(model)) == 2
    x = torch.randn(5, 2, 16, 16)
    with torch.no_grad():
        z = model.member_logits(x)
        assert z.shape == (2, 5, 1)
        expected = torch.logit(torch.sigmoid(z.double()).mean(0))
        assert torch.allclose(model(x).double(), expected, atol=1e-5)
        # members at +-60: float32 sigmoid rounds to exactly 1 and 0, a naive logit of the mean would be nan/inf
        for a, b, want in ((60.0, 60.0, 60.0), (60.0, -60.0, 0.0), (-60.0, -60.0, -60.0)):
            model.member_logits = lambda _x, a=a, b=b: torch.tensor([[[a]], [[b]]])  # type: ignore[method-assign]
            assert float(model(x[:1])) == pytest.approx(want, abs=1e-3)


def test_member_zero_is_the_single_classifier_step_for_step_and_the_others_differ() -> None:
    single, pair = _built(SINGLE), _built(PAIR)
    assert _same(single.state_dict(), _member_state(pair.state_dict(), 0))
    assert not torch.equal(pair.members[0].conv1.weight, pair.members[1].conv1.weight)
    ds = _patients()
    train_classifier(single, ds, SINGLE, CPU, epochs=2)
    stats = train_classifier(pair, ds, PAIR, CPU, epochs=2)
    trained0 = _member_state(pair.state_dict(), 0)
    for k, v in single.state_dict().items():
        assert torch.allclose(v.float(), trained0[k].float(), atol=1e-6), k
    assert not torch.equal(trained0["fc.weight"], _member_state(_built(PAIR).state_dict(), 0)["fc.weight"])
    assert 0 < stats.loss_last < 1.5  # one member's scale (the mean of the members' losses), not the sum


def test_pretraining_trains_every_members_backbone_and_member_zero_as_it_would_alone() -> None:
    single, pair = _built(SINGLE), _built(PAIR)
    assert len(list(backbone_of(pair).parameters())) == 2 * len(list(backbone_of(single).parameters()))
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    ds = _patients()
    pretrain_backbone(single, ds, SINGLE, CPU, epochs=1)
    pretrain_backbone(pair, ds, PAIR, CPU, epochs=1)
    after = pair.state_dict()
    for i in (0, 1):
        assert not torch.equal(after[f"members.{i}.conv1.weight"], before[f"members.{i}.conv1.weight"])
        assert torch.equal(after[f"members.{i}.fc.weight"], before[f"members.{i}.fc.weight"]), "no head in it"
    for k, v in single.state_dict().items():
        assert torch.allclose(v.float(), _member_state(after, 0)[k].float(), atol=1e-6), k


def test_a_sites_round_trains_and_evaluates_the_ensemble_as_one_model(tmp_path) -> None:
    """The federation's messages carry the ensemble's state dict (``members.<i>.*``); the site trains every member,
    member 0 exactly as a single classifier's round would from its weights, and scores the mean probability."""
    ds = _patients()
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    save_roi(site.cache_dir, roi_key("seg-hash", PAIR), {"t1+t2": ds})
    save_roi(site.cache_dir, roi_key("seg-hash", SINGLE), {"t1+t2": ds})
    data = SiteData(site, [], None)
    conf = {P.CFG_ROUND: 1, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 2, P.CFG_DATASET: "t1+t2",
            P.CFG_SEGMENTER_HASH: "seg-hash"}  # fmt: skip
    pair = _built(PAIR)
    sent = state_to_record(pair.state_dict())
    arrays, metrics = train_cls(sent, conf, data, PAIR, CPU)
    assert set(arrays) == set(pair.state_dict()) and metrics[P.NUM_PATIENTS] == 12
    for i in (0, 1):
        assert not np.array_equal(arrays[f"members.{i}.fc.weight"], pair.state_dict()[f"members.{i}.fc.weight"])
    alone, _ = train_cls(state_to_record(pair.members[0].state_dict()), conf, data, SINGLE, CPU)
    for k, v in alone.items():
        assert np.allclose(v, arrays[f"members.0.{k}"], atol=1e-6), k
    # a single classifier's weights do not fit an ensemble's round: refused, naming what differs
    with pytest.raises(ModelMismatchError):
        train_cls(state_to_record(pair.members[0].state_dict()), conf, data, PAIR, CPU)
    reply = evaluate_cls(sent, {**conf, P.CFG_SPLIT: "train"}, data, PAIR, CPU)
    assert reply[P.NUM_PATIENTS] == 12 and sum(reply[P.HIST_POS]) + sum(reply[P.HIST_NEG]) == 12


def test_a_bundle_rebuilds_the_ensemble_from_its_settings_and_refuses_it_as_one_resnet(tmp_path) -> None:
    pair = _built(PAIR).eval()
    path = tmp_path / "classifier_t1_t2.pt"
    torch.save(pair.state_dict(), path)
    loaded = _built(PAIR, seed=7)
    load_state_strict(loaded, path, "classifier t1+t2")
    x = torch.randn(3, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), pair(x))
    with pytest.raises(ModelMismatchError, match="unexpected key"):
        load_state_strict(_built(SINGLE), path, "classifier t1+t2")
    # bundles written before the key existed hold one ResNet per dataset
    assert KEYS_ADDED_SINCE["cls-ensemble"] == 1
    # what the model card and the reports call it
    assert PAIR.cls.architecture == "resnet18 x 2 (ensemble: mean probability)" and SINGLE.cls.architecture == "resnet18"


def test_grad_cam_of_an_ensemble_sums_its_members_maps() -> None:
    """Two identical members: the ensemble's map is the single model's. Different members: each adds its own."""
    single, pair = _built(SINGLE).eval(), _built(PAIR).eval()
    for model in (single, pair):
        for m in model.modules():  # zero_init_residual leaves the blocks identity; give them a response
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    pair.members[1].load_state_dict(pair.members[0].state_dict())
    single.load_state_dict(pair.members[0].state_dict())
    image = torch.as_tensor(_patients().images[1])
    name, layers = cam_layer(pair, tuple(image.shape))
    assert isinstance(layers, tuple) and len(layers) == 2 and name == cam_layer(single, tuple(image.shape))[0]
    alone = grad_cam(single, image)
    both = grad_cam(pair, image, layers)
    assert alone.max() == pytest.approx(1.0) and np.allclose(alone, both, atol=1e-5)
    other = _built(PAIR, seed=3).members[1]
    for m in other.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    pair.members[1].load_state_dict(other.state_dict())
    assert not np.allclose(alone, grad_cam(pair, image, cam_layer(pair, tuple(image.shape))[1]), atol=1e-3)


@pytest.mark.parametrize("dp", ["local", "central"])
def test_differential_privacy_refuses_an_ensemble(dp: str) -> None:
    with pytest.raises(ConfigError, match="cls-ensemble=2"):
        PipelineConfig.defaults({"cls-ensemble": 2, "dp": dp, "amp": False, "cls-pretrain-epochs": 0})


@pytest.mark.parametrize("k", [0, 9])
def test_ensemble_size_out_of_range_is_refused_with_the_key(k: int) -> None:
    with pytest.raises(ConfigError, match=f"cls-ensemble={k}"):
        PipelineConfig.defaults({"cls-ensemble": k})


def test_the_seed_size_scenario_trains_ensembles_and_a_dp_run_of_it_is_told_to_set_one_classifier() -> None:
    """`--preset seed-size` (README Results: the size the ensemble was measured at) gives both arms of
    `nasofl-sim compare` k = 3 ResNets and the regression member per classifier; asking it for DP is refused before
    anything runs, naming both fixes."""
    from server.config import pipeline_from_run_config
    from shared.app_config import app_defaults
    from simulations.compare import centralized_config
    from simulations.run_cmd import validate_run_config
    from simulations.scenarios import SCENARIOS

    seed_size = SCENARIOS["seed-size"].run_config
    validate_run_config(dict(seed_size))
    cfg, _ = centralized_config({**app_defaults(), **seed_size})
    assert cfg.cls.ensemble == 3 and "x 3" in cfg.cls.architecture
    assert cfg.cls.linear_member and "logistic regression" in cfg.cls.architecture
    federated = pipeline_from_run_config({**app_defaults(), **seed_size})  # what the ServerApp builds
    assert federated.cls.ensemble == 3 and federated.cls.linear_member
    others = [s.run_config for n, s in SCENARIOS.items() if n != "seed-size"]
    assert all(rc.get("cls-ensemble", 1) == 1 and not rc.get("cls-linear-member", False) for rc in others)
    with pytest.raises(ConfigError, match="set cls-ensemble=1 and cls-linear-member=false"):
        validate_run_config({**seed_size, "dp": "local", "amp": False, "cls-pretrain-rounds": 0, "cls-pretrain-epochs": 0})
