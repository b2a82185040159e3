"""``cls-local-optimizer = keep``: a site's AdamW moments carried from one classifier round to the next."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from client.handlers_cls import train_cls
from client.node_data import NodeSite, SiteData
from client.roi_cache import roi_key, save_roi
from shared import protocol as P
from shared.config import PipelineConfig
from shared.models import build_classifier
from shared.records import state_to_record
from shared.roi.datasets import RoiDataset
from tests.file_tree import file_tree, plant_hospital_file

torch.set_num_threads(1)
CPU = torch.device("cpu")

CFG = PipelineConfig.defaults(
    {
        "cls-arch": "resnet18",
        "cls-image-size": 16,
        "cls-slices-per-patient": 2,
        "cls-batch-size": 8,
        "cls-epochs": 1,
        "cls-lr": 0.003,
        "cls-local-optimizer": "restart",
        "datasets": "t1+t2",
        "device": "cpu",
        "amp": False,
    }
)


def _site(tmp_path) -> SiteData:
    """A site whose ROI cache holds 12 training patients of ``t1+t2`` (as query.roi leaves it)."""
    rng = np.random.default_rng(0)
    n = 12
    labels = [i % 2 for i in range(n)]
    images = rng.normal(0, 1, (2 * n, 2, 16, 16)).astype(np.float32)
    images[:, :, 5:11, 5:11] += 1.5 * np.repeat(labels, 2)[:, None, None, None]
    ds = RoiDataset("t1+t2", ("t1", "t2"), images, np.repeat(np.arange(n), 2), [f"p{i}" for i in range(n)],
                    labels, ["train"] * n)  # fmt: skip
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    save_roi(site.cache_dir, roi_key("seg-hash", CFG), {"t1+t2": ds})
    return SiteData(site, [], None)


def test_keep_carries_each_sites_adamw_moments_into_its_next_classifier_round_and_restart_does_not(
    tmp_path, caplog
) -> None:
    """Round 2 continues round 1's AdamW (its step count goes on, its weights differ from a fresh AdamW's on the
    same global model); the files sit in the site's cache under the dataset's name, the latest two rounds, and
    the finished segmenter stage's file goes when the classifier stage first saves; the
    scheduler's base lr is this run's ``cls-lr``, not the saved one; the stage's last round writes nothing. ``restart`` writes nothing; a file that
    does not fit the model is named in a warning and that round trains as ``restart`` does."""
    data = _site(tmp_path)
    torch.manual_seed(0)
    model = build_classifier(CFG.cls, 2)
    record = state_to_record(model.state_dict())
    keep = replace(CFG, cls=replace(CFG.cls, local_optimizer="keep"))
    optim_dir = data.site.cache_dir / "optim" / "s1"

    def round_(cfg: PipelineConfig, rnd: int) -> dict[str, np.ndarray]:
        conf = {P.CFG_ROUND: rnd, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 4, P.CFG_DATASET: "t1+t2",
                P.CFG_SEGMENTER_HASH: "seg-hash"}  # fmt: skip
        return train_cls(record, conf, data, cfg, CPU)[0]

    fresh = round_(CFG, 2)
    assert not optim_dir.exists()
    optim_dir.mkdir(parents=True)
    (optim_dir / "seg-r15.pt").write_bytes(b"the segmenter stage's last state")
    round_(keep, 1)
    assert not (optim_dir / "seg-r15.pt").exists(), "a finished stage's state is removed when the next one saves"
    r1 = torch.load(optim_dir / "cls-t1plust2-r1.pt")
    steps_r1 = max(int(s["step"]) for s in r1["state"].values())
    kept = round_(replace(keep, cls=replace(keep.cls, lr=0.002)), 2)
    r2 = torch.load(optim_dir / "cls-t1plust2-r2.pt")
    assert steps_r1 > 0 and max(int(s["step"]) for s in r2["state"].values()) == 2 * steps_r1
    assert r1["param_groups"][0]["initial_lr"] == 0.003 and r2["param_groups"][0]["initial_lr"] == 0.002
    assert r2["param_groups"][0]["weight_decay"] == CFG.cls.weight_decay
    assert any(not np.array_equal(kept[k], fresh[k]) for k in fresh)
    round_(keep, 3)
    assert sorted(p.name for p in optim_dir.iterdir()) == ["cls-t1plust2-r2.pt", "cls-t1plust2-r3.pt"]

    (optim_dir / "cls-t1plust2-r3.pt").write_bytes(b"not a torch file")
    caplog.clear()
    after_bad_file = round_(keep, 4)
    assert "cls-t1plust2-r3.pt is unreadable" in caplog.text
    # round 4 of 4 is the stage's last: its state is not written, only the file it started from stays
    assert sorted(p.name for p in optim_dir.iterdir()) == ["cls-t1plust2-r3.pt"]
    fresh_4 = round_(CFG, 4)
    assert all(np.array_equal(after_bad_file[k], fresh_4[k]) for k in fresh_4)


def test_a_dataset_name_that_is_a_path_is_refused_before_any_file_is_read_or_written(tmp_path) -> None:
    """The dataset name comes from the coordinator's message and names the ROI file the site reads and the
    optimizer files it writes: ``../`` in it would reach the hospital's other files."""
    import pytest

    from shared.errors import ConfigError

    data = _site(tmp_path)
    plant_hospital_file(tmp_path)
    keep = replace(CFG, cls=replace(CFG.cls, local_optimizer="keep"))
    record = state_to_record(build_classifier(CFG.cls, 2).state_dict())
    before = file_tree(tmp_path)
    for bad in ("../../../hospital-files/x", "t1/../../x", "t1+t1"):
        conf = {P.CFG_ROUND: 2, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 4, P.CFG_DATASET: bad,
                P.CFG_SEGMENTER_HASH: "seg-hash"}  # fmt: skip
        with pytest.raises(ConfigError, match="datasets entry"):
            train_cls(record, conf, data, keep, CPU)
    assert file_tree(tmp_path) == before
