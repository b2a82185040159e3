"""Config parsing, lr schedule, FedProx term, the segmenter and classifier loops on toy patients."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from shared.config import PipelineConfig
from shared.data.normalise import body_zscore
from shared.errors import ConfigError
from shared.models import build_classifier, build_segmenter
from shared.roi.datasets import RoiDataset
from shared.training.classification import aggregate_patient_scores, patient_scores, train_classifier
from shared.training.device import select_device
from shared.training.schedules import prox_term, snapshot_params, warmup_cosine
from shared.training.segmentation import evaluate_segmenter, predict_masks, train_segmenter
from simulations.toy_patients import make_toy_cohort, make_toy_patient

torch.set_num_threads(1)

TINY = PipelineConfig.defaults(
    {
        "seg-encoder": "resnet18",
        "seg-image-size": 32,
        "seg-batch-size": 8,
        "seg-slices-per-patient": 4,
        "seg-lr": 3e-3,
        "seg-loss": "dice",
        "seg-epochs": 4,
        "cls-arch": "resnet18",
        "cls-image-size": 32,
        "cls-slices-per-patient": 2,
        "cls-batch-size": 8,
        "cls-epochs": 3,
        "device": "cpu",
    }
)


def test_config_round_trip_and_messages() -> None:
    cfg = PipelineConfig.defaults({"seg-encoder": "resnet18", "datasets": "t1ce,t1+t2", "amp": "false"})
    assert cfg.seg.encoder == "resnet18" and cfg.datasets == ("t1ce", "t1+t2") and cfg.amp is False
    assert PipelineConfig.from_mapping(cfg.to_mapping()) == cfg
    with pytest.raises(ConfigError, match="did you mean 'cls-arch'"):
        PipelineConfig.defaults({"cls-arc": "resnet18"})
    with pytest.raises(ConfigError, match=r"cls-lr=-1.0 .*\(0.0, 1.0\]"):
        PipelineConfig.defaults({"cls-lr": -1.0})
    with pytest.raises(ConfigError, match="did you mean 'resnet101'"):
        replace(TINY.cls, arch="resnet10")
    with pytest.raises(ConfigError, match="t3"):
        replace(TINY, datasets=("t1+t3",))
    with pytest.raises(ConfigError, match="multiple of 32"):
        replace(TINY.seg, image_size=50)
    with pytest.raises(ConfigError, match="wrong type"):
        PipelineConfig.defaults({"seg-epochs": "many"})
    with pytest.raises(ConfigError, match="lack key 'seg-encoder'.*pyproject.toml"):
        PipelineConfig.from_mapping({"seed": 1})


def test_select_device_cpu() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda")


def test_warmup_cosine_shape() -> None:
    f = [warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert f[0] < f[5] < f[9] <= 1.0  # warm-up rises
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # then decays
    assert f[-1] < 0.01


def test_prox_term_zero_at_global_and_positive_away() -> None:
    model = torch.nn.Linear(3, 1)
    ref = snapshot_params(model)
    assert float(prox_term(model, ref, 0.5).detach()) == 0.0
    with torch.no_grad():
        model.weight += 1.0
    assert float(prox_term(model, ref, 0.5).detach()) == pytest.approx(0.25 * 3)


def test_body_zscore_is_scale_invariant() -> None:
    p = make_toy_patient(0, 1, size=32, depth=4)
    a = body_zscore(p.images["t2"])
    b = body_zscore(p.images["t2"] * 7.5)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_segmenter_loss_falls_and_dice_sums() -> None:
    torch.manual_seed(0)
    patients = make_toy_cohort(6, size=32, depth=6)
    model = build_segmenter(TINY.seg)
    dev = torch.device("cpu")
    stats = train_segmenter(model, patients, TINY, dev, epochs=4)
    assert stats.n_examples > 0 and stats.loss_last < stats.loss_first
    sums = evaluate_segmenter(model, patients, TINY, dev)
    assert sums.n_patients == 6 and len(sums.per_patient) == 6
    assert sums.true_sum == sum(int(p.mask.sum()) for p in patients)
    assert 0.0 <= sums.dice <= 1.0
    assert "per_patient" not in str(sums.as_metrics())
    masks = predict_masks(model, patients, TINY, dev)
    assert set(masks) == {p.pseudonym for p in patients}
    assert masks[patients[0].pseudonym].shape == patients[0].mask.shape
    assert masks[patients[0].pseudonym].dtype == np.uint8


def test_seg_norm_group_builds_a_unet_without_running_statistics_that_still_learns() -> None:
    """``seg-norm = "group"``: every BatchNorm of the U-Net is a GroupNorm, so the state dict the federation averages
    holds no running statistics; the loss still falls and a mask comes back on the patient's grid. A value outside
    the two is refused naming the key."""
    cfg = replace(TINY, seg=replace(TINY.seg, norm="group"))
    torch.manual_seed(0)
    model = build_segmenter(cfg.seg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert not any("running_" in k for k in model.state_dict())
    assert any("running_" in k for k in build_segmenter(TINY.seg).state_dict())
    patients = make_toy_cohort(6, size=32, depth=6)
    stats = train_segmenter(model, patients, cfg, torch.device("cpu"), epochs=4)
    assert stats.loss_last < stats.loss_first
    masks = predict_masks(model, patients[:1], cfg, torch.device("cpu"))
    assert masks[patients[0].pseudonym].shape == patients[0].mask.shape
    with pytest.raises(ConfigError, match="seg-norm='layer'.*batch, group"):
        PipelineConfig.defaults({"seg-norm": "layer"})


def test_prox_keeps_weights_closer() -> None:
    patients = make_toy_cohort(4, size=32, depth=4)
    dev = torch.device("cpu")
    dists = []
    for mu in (0.0, 10.0):
        torch.manual_seed(0)
        model = build_segmenter(TINY.seg)
        ref = snapshot_params(model)
        train_segmenter(model, patients, TINY, dev, epochs=2, prox_mu=mu, global_params=ref)
        dists.append(float(prox_term(model, ref, 2.0)))
    assert dists[1] < dists[0]


def _toy_roi_dataset(n: int = 16) -> RoiDataset:
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(n)]
    images = rng.normal(0, 1, (n * 2, 2, 32, 32)).astype(np.float32)
    for k in range(n * 2):
        images[k, :, 10:20, 10:20] += 1.5 * labels[k // 2]  # NPL crops are brighter in the centre
    return RoiDataset("t1+t2", ("t1", "t2"), images, np.repeat(np.arange(n), 2), [f"p{i}" for i in range(n)],
                      labels, ["train"] * n)  # fmt: skip


def test_classifier_loss_falls_and_patient_scores() -> None:
    torch.manual_seed(0)
    ds = _toy_roi_dataset()
    model = build_classifier(TINY.cls, ds.in_channels)
    seen: list[int] = []
    stats = train_classifier(
        model, ds, TINY, torch.device("cpu"), epochs=4, on_epoch_end=lambda e, _: seen.append(e)
    )
    assert seen == [0, 1, 2, 3]
    assert stats.loss_last < stats.loss_first
    scores, labels = patient_scores(model, ds, TINY, torch.device("cpu"))
    assert scores.shape == (16,) and labels.tolist() == [i % 2 for i in range(16)]
    assert np.all((scores >= 0) & (scores <= 1))


def test_patient_aggregation_is_mean_of_slices() -> None:
    out = aggregate_patient_scores(np.array([0.2, 0.4, 0.9, 0.5]), np.array([0, 0, 1, 2]), 4)
    np.testing.assert_allclose(out[:3], [0.3, 0.9, 0.5])
    assert np.isnan(out[3])


class _LeftMinusRight(torch.nn.Module):
    """A 'classifier' whose logit is the mean of the left half minus the right half of channel 0: it tells a
    slice from its left-right mirror image, so flip test-time augmentation must change its scores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return (x[:, :1, :, :half].mean(dim=(1, 2, 3)) - x[:, :1, :, half:].mean(dim=(1, 2, 3))).unsqueeze(1)


def test_flip_tta_scores_each_slice_as_the_mean_over_its_four_flips() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 2, 8, 8)).astype(np.float32)
    ds = RoiDataset("t1+t2", ("t1", "t2"), images, np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], [0, 1, 0],
                    ["test"] * 3)  # fmt: skip
    model = _LeftMinusRight()
    plain, _ = patient_scores(model, ds, TINY, torch.device("cpu"))
    flip_cfg = replace(TINY, cls=replace(TINY.cls, tta="flip"))
    tta, _ = patient_scores(model, ds, flip_cfg, torch.device("cpu"))
    x = torch.from_numpy(images)
    views = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]
    by_slice = torch.stack([torch.sigmoid(model(v).squeeze(1)) for v in views]).mean(0).double().numpy()
    assert tta == pytest.approx(aggregate_patient_scores(by_slice, ds.slice_patient, 3), abs=1e-6)
    # this model is anti-symmetric under a left-right flip: the four views cancel to exactly 0.5
    assert tta == pytest.approx([0.5, 0.5, 0.5], abs=1e-6)
    assert not np.allclose(plain, 0.5, atol=1e-3), "without TTA the slices keep their own scores"
    with pytest.raises(ConfigError, match="cls-tta"):
        PipelineConfig.defaults({"cls-tta": "rot"})


@pytest.mark.parametrize("dp", [False, True])
def test_seg_augment_reaches_the_segmenter_loop_with_and_without_dp(dp: bool) -> None:
    """The same seed and data give the same weights; seg-augment changes them, in the plain loop and in DP-SGD
    (a loop that ignored the setting would leave them equal). DP-SGD picks each sampled patient's slice with OS
    entropy, so there each patient offers one slice and every patient is sampled (rate 1, no noise)."""
    from shared.privacy.dp_sgd import DPPlan
    from shared.privacy.dp_training import train_segmenter_dp

    patients = make_toy_cohort(6, size=32, depth=6)
    cpu = torch.device("cpu")

    def trained(augment: str) -> torch.Tensor:
        cfg = replace(TINY, seg=replace(TINY.seg, augment=augment, slices_per_patient=1 if dp else 4), amp=False)
        torch.manual_seed(0)
        model = build_segmenter(cfg.seg, dp=dp)
        if dp:
            plan = DPPlan(sample_rate=1.0, noise_multiplier=0.0, steps=1, expected_batch=4, max_grad_norm=1.0)
            train_segmenter_dp(model, patients, cfg, cpu, plan, epoch=0)
        else:
            train_segmenter(model, patients, cfg, cpu, epochs=1)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = trained("none")
    assert torch.equal(plain, trained("none"))
    assert not torch.equal(plain, trained("intensity"))


def test_lr_factor_is_one_when_constant_and_decays_to_zero_when_cosine() -> None:
    from shared.training.schedules import lr_factor

    assert [lr_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    cosine = [lr_factor("cosine", s, 10) for s in range(11)]
    assert cosine[0] == 1.0 and cosine[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False))
    with pytest.raises(ValueError, match="'step'"):
        lr_factor("step", 0, 10)
    with pytest.raises(ConfigError, match="seg-lr-schedule='linear'.*constant, cosine, warmup"):
        PipelineConfig.defaults({"seg-lr-schedule": "linear"})


def test_the_warmup_schedule_rises_linearly_over_the_first_tenth_then_holds() -> None:
    from shared.training.schedules import SEG_WARMUP_FRACTION, lr_factor

    assert SEG_WARMUP_FRACTION == 0.1
    warm = [lr_factor("warmup", s, 100) for s in range(12)]
    assert warm[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert warm[10:] == [1.0, 1.0] and lr_factor("warmup", 99, 100) == 1.0
    assert all(a < b for a, b in zip(warm[:11], warm[1:11], strict=False))


@pytest.mark.parametrize("dp", [False, True])
def test_a_late_round_of_the_cosine_schedule_barely_moves_the_segmenter(dp: bool) -> None:
    """Round 10 of 10 (``start_epoch``/``epoch`` 9, ``total_epochs`` 10): under ``cosine`` the lr is near 0, so the
    weights move far less than under ``constant`` (Adam's steps scale with the lr); the first round of a schedule
    is not slowed at all. A loop that ignored ``total_epochs`` or the schedule would move them alike."""
    from shared.privacy.dp_sgd import DPPlan
    from shared.privacy.dp_training import train_segmenter_dp

    patients = make_toy_cohort(6, size=32, depth=6)
    cpu = torch.device("cpu")

    def moved(schedule: str, epoch: int, total: int) -> float:
        cfg = replace(
            TINY, seg=replace(TINY.seg, lr_schedule=schedule, slices_per_patient=1 if dp else 4), amp=False
        )
        torch.manual_seed(0)
        model = build_segmenter(cfg.seg, dp=dp)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        if dp:
            plan = DPPlan(sample_rate=1.0, noise_multiplier=0.0, steps=2, expected_batch=4, max_grad_norm=1.0)
            train_segmenter_dp(model, patients, cfg, cpu, plan, epoch=epoch, total_epochs=total)
        else:
            train_segmenter(model, patients, cfg, cpu, epochs=1, start_epoch=epoch, total_epochs=total)
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    constant = moved("constant", 9, 10)
    assert moved("cosine", 9, 10) < 0.1 * constant
    assert moved("cosine", 0, 1 if dp else 10) > 0.5 * moved("constant", 0, 10)


@pytest.mark.parametrize("dp", [False, True])
def test_a_kept_optimizer_state_continues_adam_in_both_segmenter_loops(dp: bool) -> None:
    """The state one call hands out is the state the next call continues: Adam's step count adds up (a loop that
    dropped ``optimizer_state`` would start again at the same count)."""
    from shared.privacy.dp_sgd import DPPlan
    from shared.privacy.dp_training import train_segmenter_dp

    patients = make_toy_cohort(6, size=32, depth=6)
    cfg = replace(TINY, seg=replace(TINY.seg, slices_per_patient=1 if dp else 4), amp=False)
    torch.manual_seed(0)
    model = build_segmenter(cfg.seg, dp=dp)
    kept: list[dict] = []

    def one_call(state: dict | None) -> int:
        if dp:
            plan = DPPlan(sample_rate=1.0, noise_multiplier=0.5, steps=2, expected_batch=4, max_grad_norm=1.0)
            train_segmenter_dp(
                model, patients, cfg, torch.device("cpu"), plan, epoch=0, optimizer_state=state,
                keep_optimizer_state=kept.append,
            )  # fmt: skip
        else:
            train_segmenter(
                model, patients, cfg, torch.device("cpu"), epochs=1, optimizer_state=state,
                keep_optimizer_state=kept.append,
            )  # fmt: skip
        return max(int(s["step"]) for s in kept[-1]["state"].values())

    first = one_call(None)
    assert first > 0 and one_call(kept[-1]) == 2 * first


@pytest.mark.parametrize("dp", [False, True])
def test_a_kept_optimizer_state_continues_adamw_in_both_classifier_loops(dp: bool) -> None:
    """As the segmenter's: the AdamW state one classifier call hands out is the state the next call continues,
    with or without DP-SGD, and it keeps the run's weight decay."""
    from shared.privacy.dp_sgd import DPPlan
    from shared.privacy.dp_training import train_classifier_dp

    ds = _toy_roi_dataset(8)
    cfg = replace(TINY, amp=False)
    torch.manual_seed(0)
    model = build_classifier(cfg.cls, ds.in_channels, dp=dp)
    kept: list[dict] = []

    def one_call(state: dict | None) -> int:
        if dp:
            plan = DPPlan(sample_rate=1.0, noise_multiplier=0.5, steps=2, expected_batch=4, max_grad_norm=1.0)
            train_classifier_dp(model, ds, cfg, torch.device("cpu"), plan, state, kept.append)
        else:
            train_classifier(
                model, ds, cfg, torch.device("cpu"), epochs=1, optimizer_state=state, keep_optimizer_state=kept.append
            )  # fmt: skip
        assert kept[-1]["param_groups"][0]["weight_decay"] == cfg.cls.weight_decay
        return max(int(s["step"]) for s in kept[-1]["state"].values())

    first = one_call(None)
    assert first > 0 and one_call(kept[-1]) == 2 * first
