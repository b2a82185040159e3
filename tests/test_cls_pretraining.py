"""Contrastive pretraining of the classifier backbone (``cls-pretrain-epochs``, ``cls-pretrain-rounds``): the loss,
the pairs, the loop (head untouched, labels unread, features of one patient's slices drawn together), the site's
round and its refusals, and the settings that refuse half a configuration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from client.handlers_cls import train_cls
from client.node_data import NodeSite, SiteData
from client.roi_cache import roi_key, save_roi
from server.config import FederationConfig, federation_from_run_config
from server.settings_check import check_pretraining_settings, check_study_settings
from shared import protocol as P
from shared.app_config import app_defaults
from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.models import build_classifier
from shared.records import state_to_record
from shared.roi.datasets import NO_LABEL, UNLABELLED_SPLIT, RoiDataset
from shared.training.pretrain import backbone_features, nt_xent, pretrain_backbone, slice_pairs
from tests.file_tree import file_tree, plant_hospital_file

torch.set_num_threads(1)
CPU = torch.device("cpu")

CFG = PipelineConfig.defaults(
    {
        "cls-arch": "resnet18",
        "cls-image-size": 16,
        "cls-slices-per-patient": 4,
        "cls-batch-size": 8,
        "cls-lr": 0.003,
        "cls-pretrain-epochs": 2,
        "cls-local-optimizer": "restart",
        "datasets": "t1+t2",
        "device": "cpu",
        "amp": False,
    }
)


def _patients(n: int = 16, slices: int = 4, seed: int = 0) -> RoiDataset:
    """``n`` patients whose four slices share a tumour intensity and size of their own (and differ in noise)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, (n * slices, 2, 16, 16)).astype(np.float32)
    yy, xx = np.mgrid[:16, :16]
    for i in range(n):
        radius, level = 2 + (i % 4), np.array([-1.5 + 0.2 * i, 1.5 - 0.2 * i], np.float32)
        disc = ((yy - 8) ** 2 + (xx - 8) ** 2 <= radius**2).astype(np.float32)
        images[i * slices : (i + 1) * slices] += level[:, None, None] * disc
    labels = [i % 2 for i in range(n)]
    return RoiDataset("t1+t2", ("t1", "t2"), images, np.repeat(np.arange(n), slices), [f"p{i}" for i in range(n)],
                      labels, ["train"] * n)  # fmt: skip


def test_nt_xent_is_low_for_matching_views_and_needs_two_pairs() -> None:
    z = torch.randn(8, 32)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 32)) < nt_xent(z, torch.randn(8, 32))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        nt_xent(z[:1], z[:1])


def test_slice_pairs_are_two_different_slices_of_the_same_patient() -> None:
    slice_patient = np.array([0, 0, 0, 1, 1, 2])
    a, b = slice_pairs(slice_patient, np.array([0, 1, 2]), np.random.default_rng(0))
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        assert slice_patient[ra] == slice_patient[rb] == i
    assert a[0] != b[0] and a[1] != b[1], "a patient with two or more slices gives two different ones"
    assert a[2] == b[2] == 5, "a patient with one slice pairs it with itself"


def test_pretraining_draws_a_patients_slices_together_leaves_the_head_alone_and_never_reads_labels() -> None:
    ds = _patients()
    ds.labels = None  # any read of a label fails
    torch.manual_seed(0)
    model = build_classifier(CFG.cls, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = slice_pairs(ds.slice_patient, np.arange(16), np.random.default_rng(7))

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            feats = backbone_features(model, ds.images[pairs[0] + pairs[1]])
        return float(nt_xent(feats[:16], feats[16:]))

    loss_before = held_out_loss()
    stats = pretrain_backbone(model, ds, CFG, CPU, epochs=20)
    assert held_out_loss() < 0.8 * loss_before, "the pairs of one patient's slices are told apart better"
    assert stats.n_examples == 2 * 16 * 20 and np.isfinite(stats.mean_loss)
    after = model.state_dict()
    assert torch.equal(after["fc.weight"], before["fc.weight"]) and torch.equal(after["fc.bias"], before["fc.bias"])
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])


def test_pretraining_refuses_a_dataset_of_one_patient() -> None:
    ds = _patients(n=1)
    with pytest.raises(ValueError, match="at least 2"):
        pretrain_backbone(build_classifier(CFG.cls, 2), ds, CFG, CPU, epochs=1)


def _site(tmp_path) -> SiteData:
    """12 patients with an ROI: 8 training, 2 validation and test patients, 2 without a diagnosis."""
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    ds = _patients(n=14)
    ds.split = ("train",) * 8 + ("val", "test", "val", "test") + (UNLABELLED_SPLIT,) * 2
    ds.labels[-2:] = NO_LABEL
    save_roi(site.cache_dir, roi_key("seg-hash", CFG), {"t1+t2": ds})
    return SiteData(site, [], None)


def _conf(rnd: int = 1) -> dict:
    return {P.CFG_ROUND: rnd, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 2, P.CFG_DATASET: "t1+t2",
            P.CFG_SEGMENTER_HASH: "seg-hash", P.CFG_STAGE: P.STAGE_CLS_PRETRAIN}  # fmt: skip


def test_a_sites_pretraining_round_trains_the_backbone_and_replies_like_a_classifier_round(tmp_path) -> None:
    data = _site(tmp_path)
    torch.manual_seed(0)
    model = build_classifier(CFG.cls, 2)
    sent = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    keep = replace(CFG, cls=replace(CFG.cls, local_optimizer="keep"))
    arrays, metrics = train_cls(state_to_record(model.state_dict()), _conf(1), data, keep, CPU)
    assert set(metrics) == set(P.TRAIN_METRICS)
    # the 8 training and 2 unlabelled patients; never a validation or test patient
    assert metrics[P.NUM_PATIENTS] == 10 and metrics[P.NUM_EXAMPLES] == 2 * 10 * CFG.cls.pretrain_epochs
    assert metrics[P.TRAIN_LOSS] > 0
    assert np.array_equal(arrays["fc.weight"], sent["fc.weight"])
    assert not np.array_equal(arrays["conv1.weight"], sent["conv1.weight"])
    optim = data.site.cache_dir / "optim" / "s1"
    assert [p.name for p in optim.iterdir()] == ["cls-pretrain-t1plust2-r1.pt"]
    state = torch.load(optim / "cls-pretrain-t1plust2-r1.pt")
    assert len(state["param_groups"][0]["params"]) == len(list(model.parameters())) - 2, "no head in it"
    # round 2 of 2 continues it (no warning of a misfit) and, being the last, writes nothing more
    train_cls(state_to_record(model.state_dict()), _conf(2), data, keep, CPU)
    assert [p.name for p in optim.iterdir()] == ["cls-pretrain-t1plust2-r1.pt"]


def test_a_site_under_local_dp_refuses_a_pretraining_round_and_trains_nothing(tmp_path) -> None:
    """DP-SGD clips each patient's gradient; the contrastive loss mixes patients, so a coordinator asking for it
    under dp='local' would get a round without the promised DP: the site refuses before touching its data."""
    data = _site(tmp_path)
    local_dp = PipelineConfig.defaults({**CFG.to_mapping(), "cls-pretrain-epochs": 0, "dp": "local"})
    model = build_classifier(local_dp.cls, 2, dp=True)
    before = file_tree(tmp_path)
    with pytest.raises(ConfigError, match="dp='local'"):
        train_cls(state_to_record(model.state_dict()), _conf(1), data, local_dp, CPU)
    no_epochs = replace(CFG, cls=replace(CFG.cls, pretrain_epochs=0))
    with pytest.raises(ConfigError, match="cls-pretrain-epochs=0"):
        train_cls(state_to_record(build_classifier(CFG.cls, 2).state_dict()), _conf(1), data, no_epochs, CPU)
    assert file_tree(tmp_path) == before


def test_a_site_refusing_pretraining_refuses_before_its_crops_are_read_and_a_bad_value_is_named(
    tmp_path, monkeypatch
) -> None:
    """Node config ``pretraining = "refuse"``: the site's own word, whatever the run config asks; no crop is read,
    nothing is written. The setting reaches the node from ``nasofl-site join --pretraining``; a value outside the
    three is refused naming the key and the choices."""
    from flwr.common.config import parse_config_args

    from client import handlers_pretrain
    from client.node_cmd import node_config
    from client.node_data import pretraining_consent, resolve_site

    data = _site(tmp_path)
    refusing = SiteData(replace(data.site, pretraining="refuse"), [], None)
    before = file_tree(tmp_path)

    def no_crops(*_args, **_kwargs):
        raise AssertionError("the site read its crops for a round it refuses")

    monkeypatch.setattr(handlers_pretrain, "requested_roi", no_crops)
    with pytest.raises(ConfigError, match="hospital-a refuses contrastive pretraining.*pretraining='refuse'"):
        train_cls(state_to_record(build_classifier(CFG.cls, 2).state_dict()), _conf(1), refusing, CFG, CPU)
    assert file_tree(tmp_path) == before

    for choice in ("all", "diagnosed", "refuse"):
        text = node_config(tmp_path, None, False, None, None, pretraining=choice)
        assert resolve_site(parse_config_args([text]), {}).pretraining == choice
    assert resolve_site(parse_config_args([node_config(tmp_path, None, False, None, None)]), {}).pretraining == "all"
    with pytest.raises(ConfigError, match="node config pretraining='sometimes': expected one of all, diagnosed, refuse"):
        pretraining_consent({"pretraining": "sometimes"})
    with pytest.raises(ConfigError, match="pretraining="):
        resolve_site({"partition-id": 0, "pretraining": True}, {"sim-data-root": str(tmp_path)})


def test_settings_refuse_half_a_pretraining_configuration_and_pretraining_under_local_dp() -> None:
    fed = replace(federation_from_run_config(dict(app_defaults())), cls_pretrain_rounds=0)
    on = replace(fed, cls_pretrain_rounds=2)
    assert isinstance(on, FederationConfig)
    with pytest.raises(ConfigError, match="cls-pretrain-rounds=2 with cls-pretrain-epochs=0"):
        check_pretraining_settings(on, PipelineConfig.defaults({"cls-pretrain-epochs": 0}))
    with pytest.raises(ConfigError, match="cls-pretrain-epochs=2 with cls-pretrain-rounds=0"):
        check_study_settings(fed, PipelineConfig.defaults({"cls-pretrain-epochs": 2}))
    check_study_settings(on, PipelineConfig.defaults({"cls-pretrain-epochs": 2}))
    with pytest.raises(ConfigError, match="dp='local' with cls-pretrain-epochs=2"):
        PipelineConfig.defaults({"cls-pretrain-epochs": 2, "dp": "local", "amp": False})
    with pytest.raises(ConfigError, match="cls-pretrain-epochs=-1 is out of range"):
        PipelineConfig.defaults({"cls-pretrain-epochs": -1})


def test_a_pretraining_round_for_a_dataset_name_that_is_a_path_is_refused_before_any_file_is_touched(tmp_path):
    """The coordinator's dataset name names the ROI file the site reads and the optimizer files it writes."""
    data = _site(tmp_path)
    plant_hospital_file(tmp_path)
    keep = replace(CFG, cls=replace(CFG.cls, local_optimizer="keep"))
    record = state_to_record(build_classifier(CFG.cls, 2).state_dict())
    before = file_tree(tmp_path)
    for bad in ("../../../hospital-files/x", "t1/../../x"):
        with pytest.raises(ConfigError, match="datasets entry"):
            train_cls(record, {**_conf(1), P.CFG_DATASET: bad}, data, keep, CPU)
    assert file_tree(tmp_path) == before
