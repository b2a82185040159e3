"""A site's segmenter round follows the stage's lr schedule: the server's ``total-rounds`` sets where it ends."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from client.handlers_seg import train_seg
from client.node_data import NodeSite, SiteData
from shared import protocol as P
from shared.config import PipelineConfig
from shared.models import build_segmenter
from shared.records import state_to_record
from simulations.toy_patients import make_toy_cohort

torch.set_num_threads(1)
CPU = torch.device("cpu")

CFG = PipelineConfig.defaults(
    {
        "seg-encoder": "resnet18",
        "seg-image-size": 32,
        "seg-slices-per-patient": 4,
        "seg-lr": 3e-3,
        "seg-epochs": 1,
        "seg-augment": "none",
        "seg-local-optimizer": "restart",
        "device": "cpu",
        "amp": False,
    }
)


def test_the_last_round_of_a_cosine_stage_moves_the_segmenter_far_less_than_a_constant_one(tmp_path) -> None:
    """Round 8 of 8 under ``cosine`` runs at an lr near 0; under ``constant`` at full lr. The same round without
    ``total-rounds`` in the message is the last of its own schedule too; as round 1 of 8 it is barely slowed
    (a site that ignored ``total-rounds`` would decay to 0 within round 1: about 0.75 of the constant run)."""
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    data = SiteData(site, make_toy_cohort(10, size=32, depth=6), None)
    torch.manual_seed(0)
    model = build_segmenter(CFG.seg)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    weights = [name for name, _ in model.named_parameters()]  # BatchNorm statistics move whatever the lr
    record = state_to_record(start)

    def moved(schedule: str, rnd: int, total: int | None) -> float:
        cfg = replace(CFG, seg=replace(CFG.seg, lr_schedule=schedule))
        conf = {P.CFG_ROUND: rnd, P.CFG_STUDY: "s1"} | ({P.CFG_TOTAL_ROUNDS: total} if total else {})
        arrays, metrics = train_seg(record, conf, data, cfg, torch.device("cpu"))
        assert metrics[P.NUM_PATIENTS] > 0
        return float(np.sqrt(sum(((arrays[k] - start[k].numpy()) ** 2).sum() for k in weights)))

    constant = moved("constant", 8, 8)
    assert moved("cosine", 8, 8) < 0.1 * constant
    assert moved("cosine", 8, None) < 0.1 * constant
    assert moved("cosine", 1, 8) > 0.85 * moved("constant", 1, 8)


def test_the_warmup_schedule_slows_a_stages_first_round_and_leaves_its_later_rounds_alone(tmp_path) -> None:
    """``warmup``: the lr rises over the stage's first tenth (round 1 of 10 here), so round 1 moves the weights
    less than under ``constant`` and round 5 of 10 moves them as ``constant`` does (a site that ignored
    ``total-rounds`` would warm up within every round as if it were the stage's first)."""
    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    data = SiteData(site, make_toy_cohort(10, size=32, depth=6), None)
    torch.manual_seed(0)
    model = build_segmenter(CFG.seg)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    weights = [name for name, _ in model.named_parameters()]
    record = state_to_record(start)

    def moved(schedule: str, rnd: int) -> float:
        cfg = replace(CFG, seg=replace(CFG.seg, lr_schedule=schedule))
        conf = {P.CFG_ROUND: rnd, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 10}
        arrays, _ = train_seg(record, conf, data, cfg, torch.device("cpu"))
        return float(np.sqrt(sum(((arrays[k] - start[k].numpy()) ** 2).sum() for k in weights)))

    assert moved("warmup", 1) < 0.8 * moved("constant", 1)
    assert moved("warmup", 5) == moved("constant", 5)


def test_keep_carries_each_sites_adam_moments_into_its_next_round_and_restart_does_not(tmp_path, caplog) -> None:
    """``seg-local-optimizer = keep``: round 2 continues round 1's Adam (its step count goes on, so its weights
    differ from a fresh Adam's on the same global model); the state stays in the site's cache, the latest two
    rounds of the latest study only. ``restart`` writes nothing. A file that does not fit the model is named in a warning and that
    round trains exactly as ``restart`` does."""
    from client.local_optimizer import load_optimizer_state

    site = NodeSite("hospital-a", tmp_path, tmp_path / "cache", False)
    data = SiteData(site, make_toy_cohort(10, size=32, depth=6), None)
    torch.manual_seed(0)
    model = build_segmenter(CFG.seg)
    record = state_to_record(model.state_dict())
    keep = replace(CFG, seg=replace(CFG.seg, local_optimizer="keep"))
    optim_dir = site.cache_dir / "optim" / "s1"

    def round_(cfg: PipelineConfig, rnd: int) -> dict[str, np.ndarray]:
        return train_seg(record, {P.CFG_ROUND: rnd, P.CFG_STUDY: "s1", P.CFG_TOTAL_ROUNDS: 4}, data, cfg, CPU)[0]

    fresh = round_(CFG, 2)
    assert not optim_dir.exists()
    earlier_study = site.cache_dir / "optim" / "s0"
    earlier_study.mkdir(parents=True)
    (earlier_study / "seg-r7.pt").write_bytes(b"state of an earlier study")
    round_(keep, 1)
    assert not earlier_study.exists()
    steps_r1 = max(int(s["step"]) for s in torch.load(optim_dir / "seg-r1.pt")["state"].values())
    kept = round_(keep, 2)
    steps_r2 = max(int(s["step"]) for s in torch.load(optim_dir / "seg-r2.pt")["state"].values())
    assert steps_r1 > 0 and steps_r2 == 2 * steps_r1
    assert any(not np.array_equal(kept[k], fresh[k]) for k in fresh)
    round_(keep, 3)
    assert sorted(p.name for p in optim_dir.iterdir()) == ["seg-r2.pt", "seg-r3.pt"]

    other = build_segmenter(replace(CFG.seg, encoder="resnet34"))
    assert load_optimizer_state(site.cache_dir, "s1", "seg", 4, other) is None
    assert "seg-r3.pt is for" in caplog.text or "seg-r3.pt is shaped" in caplog.text
    (optim_dir / "seg-r3.pt").write_bytes(b"not a torch file")
    (optim_dir / "seg-r2.pt").unlink()
    caplog.clear()
    after_bad_file = round_(keep, 4)
    assert "seg-r3.pt is unreadable" in caplog.text
    assert sorted(p.name for p in optim_dir.iterdir()) == ["seg-r3.pt"], "the stage's last round writes nothing"
    fresh_4 = round_(CFG, 4)
    assert all(np.array_equal(after_bad_file[k], fresh_4[k]) for k in fresh_4)
    caplog.clear()
    assert load_optimizer_state(site.cache_dir, "s2", "seg", 3, other) is None
    assert "no optimizer state from an earlier seg round of study s2" in caplog.text


def test_a_study_id_that_is_a_path_is_refused_before_any_file_is_written_or_removed(tmp_path, monkeypatch) -> None:
    """The study id comes from the coordinator's message and names folders in the site's cache, where earlier
    studies' folders are removed: ``../`` in it would reach the hospital's other files."""
    import pytest
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import _conf
    from client.local_model import check_study_id, save_local_norm
    from client.local_optimizer import save_optimizer_state

    assert check_study_id("4409812d7076") == "4409812d7076" and check_study_id("study") == "study"
    bystander = tmp_path / "hospital-files"
    bystander.mkdir()
    (bystander / "keep-me.txt").write_text("not the site's cache")
    cache = tmp_path / "site" / "cache"
    for bad in ("../../../hospital-files", "a/b", "", "x" * 65, 7):
        with pytest.raises(ValueError, match="'study-id'.*refused"):
            check_study_id(bad)
    with pytest.raises(ValueError, match="'study-id'.*refused"):
        save_optimizer_state(cache, "../../../hospital-files/x", "seg", 1, {"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="'study-id'.*refused"):
        save_local_norm(build_segmenter(CFG.seg), cache, "../../..", "seg", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # set by flwr's runtime in the process that sends it
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    msg = Message(RecordDict({P.CONFIG: ConfigRecord({P.CFG_STUDY: "../x", P.CFG_ROUND: 1})}), 0, "train.seg")
    with pytest.raises(ValueError, match="'study-id'.*refused"):
        _conf(msg)
    assert (bystander / "keep-me.txt").read_text() == "not the site's cache"
    assert not (tmp_path / "site").exists()
